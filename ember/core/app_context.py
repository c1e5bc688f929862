"""Seed import path: ``from ember.core.app_context import get_app_context``."""

from ember._context import EmberAppContext, get_app_context, initialize_ember, reset_app_context

__all__ = ["EmberAppContext", "get_app_context", "initialize_ember", "reset_app_context"]
