"""NON API: ``from ember.api import non``; ``non.UniformEnsemble(...)``, ``non.build_graph(...)``."""

from ember.non import *  # noqa: F403  (the NON layer's public surface)
from ember.non import __all__  # noqa: F401
