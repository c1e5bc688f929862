"""Seed import path: the data layer lives in :mod:`ember.data`."""

from ember.data import *  # noqa: F403
from ember.data import __all__  # noqa: F401
