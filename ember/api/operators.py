"""Operators API: ``from ember.api.operators import Operator, Specification, EmberModel``."""

from ember.operators import *
from ember.operators import __all__  # noqa: F401
