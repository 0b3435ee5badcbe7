"""Assertions and probes shared by several test modules (importable because pytest puts tests/ on sys.path)."""

import math

import torch


def assert_unbiased(samples: torch.Tensor, expected: torch.Tensor, z: float = 4.5) -> None:
    """The sample mean lies within z standard errors of `expected` in every coordinate."""
    error = (samples.mean(0) - expected).abs()
    standard_error = samples.std(0) / math.sqrt(samples.shape[0])
    assert (error <= z * standard_error + 1e-9).all(), (samples.mean(0), expected, standard_error)


def recording(loss_gradient, precisions: list):
    """loss_gradient whose gradient functions append (matmul precision, oneDNN fp32 precision) to `precisions`
    at each call."""

    def recording_loss_gradient(*args):
        gradient = loss_gradient(*args)

        def recorded(*inputs):
            precisions.append((torch.get_float32_matmul_precision(), torch.backends.mkldnn.matmul.fp32_precision))
            return gradient(*inputs)

        return recorded

    return recording_loss_gradient
