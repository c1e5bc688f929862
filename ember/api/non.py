"""NON API: ``from ember.api import non``; ``non.UniformEnsemble(...)``, ``non.build_graph(...)``."""

from ember.non import *
from ember.non import __all__  # noqa: F401
