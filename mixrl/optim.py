"""Optimisation for small networks in hot loops: all parameters in one flat tensor, and Adam on it.

With networks of a few thousand weights each optimiser step costs more in per-tensor and Python bookkeeping
than in arithmetic. Here every parameter is a view into one tensor, so zeroing, clipping and the Adam update
are one kernel each.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value

from mixrl.errors import UsageError


def flatten_parameters(modules: Sequence[nn.Module]) -> torch.Tensor:
    """Move the parameters of `modules` into one contiguous tensor and return it, its `.grad` set.

    Every parameter and its gradient become views into the flat tensor and its `.grad`; autograd then
    accumulates into the views. Zero the gradients with `flat.grad.zero_()`, never by setting them to None.
    """
    params = [p for module in modules for p in module.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset : offset + n].view_as(p)
        p.grad = flat.grad[offset : offset + n].view_as(p)
        offset += n
    return flat


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """torch.set_float32_matmul_precision(precision) inside the block (or the decorated function), restored after it.
    "medium" lets float32 products run in bfloat16 with float32 accumulation (AMX CPUs, GPUs)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def loss_gradient(objective: nn.Module, flat: torch.Tensor, compile: bool = False) -> Callable[..., tuple[Any, Any]]:
    """A function `inputs -> (loss, aux)` of `objective(*inputs) -> (loss, aux)` that also writes d loss / d flat into
    `flat.grad`. The parameters of `objective` that are views into `flat` (flatten_parameters) are differentiated;
    any others are read as they are (the caller keeps them out of the graph, with torch.no_grad or
    requires_grad_(False), as for an eager backward pass).

    Eager: a forward pass and `loss.backward()`. With `compile`, the loss is a function of the flat tensor whose
    gradient (torch.func.grad_and_value) is compiled with its forward pass into one torch.compile graph, so no
    autograd graph is built at run time: much less per-operation overhead on small networks. All compiled
    objectives share one code object and so torch.compile's recompile limit (8): a process that builds more, run
    after run, calls torch.compiler.reset() between runs (the agents do).
    """
    if not compile:

        def eager(*inputs: Any) -> tuple[Any, Any]:
            loss, aux = objective(*inputs)
            flat.grad.zero_()
            loss.backward()
            return loss.detach(), aux

        return eager

    base, size = flat.data_ptr(), flat.element_size()
    views = []  # (offset, name, shape) of the objective's parameters in flat, in the order they are stored there
    for name, p in objective.named_parameters():
        offset = (p.data_ptr() - base) // size
        if p.device == flat.device and 0 <= offset <= flat.numel() - p.numel():
            views.append((offset, name, p.shape))
    views.sort()
    sizes = [shape.numel() for _, _, shape in views]
    if [offset for offset, _, _ in views] != [sum(sizes[:i]) for i in range(len(sizes))] or sum(sizes) != flat.numel():
        raise ValueError("The objective's parameters do not cover the flat tensor: flatten the objective's networks.")

    def loss_of_flat(values: torch.Tensor, *inputs: Any) -> tuple[torch.Tensor, Any]:
        # split, not one slice per parameter: the gradient of a split is one concatenation, while each slice's
        # would be a zero-filled tensor of the flat size (slow for large networks such as A2PR's VAE).
        chunks = values.split(sizes)
        return functional_call(objective, {name: c.view(shape) for (_, name, shape), c in zip(views, chunks)}, inputs)

    options = compile_options(flat.device)
    gradient_and_loss = torch.compile(grad_and_value(loss_of_flat, has_aux=True), dynamic=False, options=options)

    def compiled(*inputs: Any) -> tuple[Any, Any]:
        grad, (loss, aux) = gradient_and_loss(flat.detach(), *inputs)
        flat.grad.copy_(grad)
        return loss, aux

    return compiled


def skip_guards_after_first_call(enabled: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: when `enabled`, every call after the first runs with TorchDynamo's guard checks skipped
    (torch.compiler.set_stance(skip_guard_eval_unsafe=True)). Only for a function whose compiled losses see the same
    shapes, dtypes, networks and settings at every call by construction, so that the guards could never fail; they
    cost PPO 4% of a ResiP iteration with minibatches of 64."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        skip = False  # set once the first call has compiled the losses

        @functools.wraps(function)
        def skipping(*args: Any, **kwargs: Any) -> Any:
            nonlocal skip
            with torch.compiler.set_stance(skip_guard_eval_unsafe=skip):
                result = function(*args, **kwargs)
            skip = enabled
            return result

        return skipping

    return decorate


def compile_options(device: str | torch.device) -> dict[str, Any]:
    """Inductor's options for a compiled loss on `device`. On the CPU, `cpp_wrapper` drives the compiled graph from
    C++ rather than Python (less overhead per kernel call). Not on a GPU: there it compiles a C++ wrapper against the
    CUDA toolkit's headers, which pip's CUDA wheels do not ship (no CUDA_HOME), and the compile fails."""
    return {"cpp_wrapper": True} if torch.device(device).type == "cpu" else {}


class FlatAdam:
    """Adam (Kingma and Ba 2015) on one flat parameter tensor, with the kernel of torch.optim.Adam(fused=True)
    (CPU, CUDA and MPS) called directly, without torch.optim's per-step Python bookkeeping:

        m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,  p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    `lr` may be changed between steps (learning-rate schedules).
    """

    def __init__(self, params: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        if params.grad is None:  # a tensor that flatten_parameters did not make, e.g. SAC's log alpha
            params.grad = torch.zeros_like(params)
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.steps = torch.zeros((), dtype=torch.float32, device=params.device)

    def step(self) -> None:
        """One update from `params.grad`."""
        self.steps += 1
        torch._fused_adam_(
            [self.params],
            [self.params.grad],
            [self.exp_avg],
            [self.exp_avg_sq],
            [],
            [self.steps],
            amsgrad=False,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not {"lr", "exp_avg", "exp_avg_sq", "steps"} <= state.keys():
            raise UsageError(
                "The checkpoint's optimiser state is not FlatAdam's (a checkpoint of an older mixrl, which used "
                "torch.optim.Adam?): it cannot be resumed exactly; its policy still loads with mixrl.load_policy."
            )
        if state["exp_avg"].shape != self.params.shape:
            raise UsageError(
                f"Optimiser state for {tuple(state['exp_avg'].shape)} parameters does not fit "
                f"{tuple(self.params.shape)}: the checkpoint was made with other network sizes."
            )
        self.lr = state["lr"]
        for name in ("exp_avg", "exp_avg_sq", "steps"):
            getattr(self, name).copy_(state[name])


def keep_freed_memory() -> None:
    """Let glibc's malloc keep the memory a step frees for the next step instead of returning it to the system.
    Each RLPD critic step (mixrl.agents.rlif) allocates and frees about 20 MB of activations (10 critics x 256 x 256
    per layer); with glibc's defaults they came back as fresh pages every step (about 2,500 page faults and 6 ms of
    system time per critic step on a 2-core EPYC, a fifth of its time). Process-wide; no-op where the C library is
    not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB free at the top of the heap
    mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: blocks up to 32 MiB (glibc's largest) from the heap, not fresh mmaps
