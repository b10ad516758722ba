"""ganforge: distributed GAN training (Ray + DeepSpeed), Triton kernels, Ray Serve, quality study."""

__version__ = "0.1.0"
