"""facerecon: detailed 3D face reconstruction from a single image, in JAX.

`facerecon.Reconstructor()` reconstructs faces from image arrays
(`facerecon.api`; `facerecon.FitOptions` says how its networks are
applied); both are imported on first use, so `import facerecon` stays
light.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
  if name in ("Reconstructor", "FitOptions"):
    from facerecon import api  # pylint: disable=import-outside-toplevel  (on first use)

    return getattr(api, name)
  raise AttributeError(f"module 'facerecon' has no attribute '{name}'")
