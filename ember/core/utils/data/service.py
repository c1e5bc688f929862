"""Seed import path: ``from ember.core.utils.data.service import DataService``."""

from ember.data import DataService

__all__ = ["DataService"]
