"""Seed import path: evaluation lives in :mod:`ember.eval`."""

from ember.eval import *  # noqa: F403
from ember.eval import __all__  # noqa: F401
