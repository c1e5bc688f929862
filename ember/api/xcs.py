"""Execution engine API: ``from ember.api.xcs import XCSGraph, execute_graph, jit, autograph, ...``."""

from ember.xcs import *  # noqa: F403  (the engine's public surface)
from ember.xcs import __all__  # noqa: F401
