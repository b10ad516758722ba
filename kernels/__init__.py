"""Kernels for ganforge's two hotspots: transposed convolution and the WGAN-GP gradient penalty.

Public functions take a `backend` ("auto" | "torch" | "triton"): "auto" picks Triton for CUDA
tensors when Triton is importable and the PyTorch reference otherwise. This package imports only
torch and triton.
"""

from ganforge.kernels.dispatch import conv_transpose2d, gradient_penalty, resolve_backend

__all__ = ["conv_transpose2d", "gradient_penalty", "resolve_backend"]
