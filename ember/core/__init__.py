"""Ember's core layer, under the import paths of the original architecture."""
