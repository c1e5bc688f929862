"""Ember's public API: ``from ember.api import models, non``; submodules load on first import."""
