"""Seed import paths for data and evaluation (``ember.core.utils.data``, ``ember.core.utils.eval``)."""
