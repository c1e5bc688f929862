"""Operators API: ``from ember.api.operators import Operator, Specification, EmberModel``."""

from ember.operators import *  # noqa: F403  (the operators layer's public surface)
from ember.operators import __all__  # noqa: F401
