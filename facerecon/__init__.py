"""facerecon: detailed 3D face reconstruction from a single image, in JAX."""

__version__ = "0.1.0"
