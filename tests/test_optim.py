"""mixrl.optim: the compiled gradient against autograd, and the scope of the matmul precision."""

import pytest
import torch
from torch import nn

from mixrl import optim
from mixrl.optim import FlatAdam, compile_options, flatten_parameters, loss_gradient, matmul_precision


class Objective(nn.Module):
    """loss = mean (frozen(trained(x)))^2, aux = the mean output; `frozen` is not differentiated."""

    def __init__(self, trained: nn.Module, frozen: nn.Module):
        super().__init__()
        self.trained, self.frozen = trained, frozen

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = self.frozen(self.trained(x))
        return y.pow(2).mean(), {"mean": y.detach().mean()}


def networks():
    torch.manual_seed(0)
    trained = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    return trained, nn.Linear(3, 1).requires_grad_(False)


def test_compiled_gradient_equals_autograd_and_overwrites_the_flat_gradient():
    trained, frozen = networks()
    flat = flatten_parameters([trained])
    objective, x = Objective(trained, frozen), torch.randn(32, 5)
    eager_loss, eager_aux = loss_gradient(objective, flat)(x)
    eager_grad = flat.grad.clone()
    assert eager_grad.abs().sum() > 0

    flat.grad.fill_(123.0)  # a stale gradient must be replaced, not added to
    loss, aux = loss_gradient(objective, flat, compile=True)(x)
    torch.testing.assert_close(flat.grad, eager_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(aux["mean"], eager_aux["mean"])
    assert frozen.weight.grad is None
    assert trained[0].weight.grad.data_ptr() == flat.grad.data_ptr()  # the views survive


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_inductor_cpp_wrapper_only_on_the_cpu(device):
    """cpp_wrapper on a GPU compiles a C++ wrapper against the CUDA toolkit's headers, absent with pip's CUDA wheels."""
    assert compile_options("cpu") == {"cpp_wrapper": True}
    assert "cpp_wrapper" not in compile_options(device)


def test_compiled_loss_gets_the_options_of_the_flat_tensors_device(monkeypatch):
    seen = []
    monkeypatch.setattr(optim, "compile_options", lambda device: seen.append(torch.device(device)) or {"x": 1})
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs["options"]) or fn)
    trained, frozen = networks()
    loss_gradient(Objective(trained, frozen), flatten_parameters([trained]), compile=True)
    assert seen == [torch.device("cpu"), {"x": 1}]


def test_compiled_gradient_refuses_networks_outside_the_flat_tensor():
    trained, frozen = networks()
    flat = flatten_parameters([nn.Linear(5, 16)])
    with pytest.raises(ValueError, match="flatten"):
        loss_gradient(Objective(trained, frozen), flat, compile=True)


def test_matmul_precision_is_restored_after_the_scope():
    before = torch.get_float32_matmul_precision()

    @matmul_precision("medium")
    def inside() -> str:
        return torch.get_float32_matmul_precision()

    assert inside() == "medium" and before != "medium"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError), matmul_precision("medium"):
        raise RuntimeError
    assert torch.get_float32_matmul_precision() == before


def test_flat_adam_follows_a_learning_rate_changed_between_steps():
    """An annealed schedule: FlatAdam with lr set before each step matches torch's Adam with the same schedule."""
    torch.manual_seed(0)
    net, reference = nn.Linear(4, 2), nn.Linear(4, 2)
    reference.load_state_dict(net.state_dict())
    optimizer = FlatAdam(flatten_parameters([net]), lr=1e-2)
    torch_optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    for lr in [1e-2, 5e-3, 1e-4, 2e-2]:
        x = torch.randn(8, 4)
        optimizer.params.grad.zero_()
        net(x).square().sum().backward()
        optimizer.lr = lr
        optimizer.step()
        torch_optimizer.zero_grad()
        reference(x).square().sum().backward()
        torch_optimizer.param_groups[0]["lr"] = lr
        torch_optimizer.step()
    torch.testing.assert_close(net.weight, reference.weight)
    torch.testing.assert_close(net.bias, reference.bias)


def test_flat_adam_refuses_another_optimisers_state():
    params = torch.zeros(3)
    params.grad = torch.zeros(3)
    other = torch.optim.Adam([torch.zeros(3, requires_grad=True)]).state_dict()
    with pytest.raises(ValueError, match="not FlatAdam's"):
        FlatAdam(params, 1e-3).load_state_dict(other)
