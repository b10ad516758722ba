"""Kernels for ganforge's hotspots: transposed convolution, the WGAN-GP gradient penalty and
StyleGAN2's modulated convolution.

Public functions take a `backend` ("auto" | "torch" | "triton"). On CUDA tensors "auto" lets the
transposed conv, the gradient penalty and the modulated conv measure both backends per case on
first use and keep the faster one that agrees with the reference (`autotune`; `auto_choices()`
lists the decisions); elsewhere it runs the PyTorch reference. This package imports only torch
and triton.
"""

from ganforge.kernels.autotune import auto_choices
from ganforge.kernels.dispatch import (
    conv_transpose2d,
    gradient_penalty,
    modulated_conv2d,
    resolve_backend,
)

__all__ = [
    "auto_choices",
    "conv_transpose2d",
    "gradient_penalty",
    "modulated_conv2d",
    "resolve_backend",
]
