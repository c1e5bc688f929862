"""Seed import path: ``from ember.core.utils.data.base.samplers import RandomSampler``."""

from ember.data import FirstNSampler, RandomSampler, Sampler, StratifiedSampler

__all__ = ["Sampler", "RandomSampler", "FirstNSampler", "StratifiedSampler"]
