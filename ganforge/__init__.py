"""ganforge: distributed GAN training (Ray + DeepSpeed), Triton kernels, serving, quality study."""

__version__ = "0.1.0"
