"""facerecon: detailed 3D face reconstruction from a single image, in JAX.

`facerecon.Reconstructor()` reconstructs faces from image arrays
(`facerecon.api`); it is imported on first use, so `import facerecon`
stays light.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
  if name == "Reconstructor":
    from facerecon import api  # pylint: disable=import-outside-toplevel  (on first use)

    return api.Reconstructor
  raise AttributeError(f"module 'facerecon' has no attribute '{name}'")
