"""Seed import path for the data layer's building blocks."""
