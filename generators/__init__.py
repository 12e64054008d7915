"""Latent code -> image generators behind one registry: `load(name)`, `available()`.

Registered: dcgan-faces, biggan-deep-128/256/512, deepsim-fc6 (see docs/generators.md).
"""

from . import biggan, dcgan, deepsim  # noqa: F401  (each registers its generators)
from .base import (Generator, GeneratorError, GeneratorOptionError, WeightsNotFoundError, available, load, register,
                   weights_source)

__all__ = ["Generator", "GeneratorError", "GeneratorOptionError", "WeightsNotFoundError", "available", "load", "register",
           "weights_source"]
