"""Views of the model registry (models/registry.py) by weight source, as tuples of names."""

from .registry import MODELS, PackagedGGUF, RandomInit, ShippedCheckpoint, names

RANDOM_NAMES = names(RandomInit)
REAL_NAMES = names(PackagedGGUF)
SHIPPED_NAMES = names(ShippedCheckpoint)
BUILTIN_MODELS = tuple(n for n, e in MODELS.items() if e.loadable)  # the names load_model accepts
