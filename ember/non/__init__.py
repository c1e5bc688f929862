"""Networks of Networks: ensembles, judges, verifiers, votes, and compact notation.

>>> from ember.api import non
>>> ensemble = non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o")
>>> ensemble(inputs={"query": "What is 2 + 2?"}).responses        # doctest: +SKIP
"""

from ember.non._calls_estimator import CallsEstimate, estimate_num_calls, vote_accuracy
from ember.non._ensembles import UniformEnsemble, VariedEnsemble
from ember.non._notation import NotationError, build_graph
from ember.non._vote import Filter, FilterVote, Vote
from ember.non._weighted_vote import WeightedVote, WeightedVoteOutput
from ember.operators import (
    Ensemble,
    JudgeSynthesis,
    MostCommon,
    Parallel,
    Router,
    SelectBest,
    Sequential,
    Synthesis,
    Verifier,
)

__all__ = [
    "CallsEstimate",
    "Ensemble",
    "Filter",
    "FilterVote",
    "JudgeSynthesis",
    "MostCommon",
    "NotationError",
    "Parallel",
    "Router",
    "SelectBest",
    "Sequential",
    "Synthesis",
    "UniformEnsemble",
    "VariedEnsemble",
    "Verifier",
    "Vote",
    "WeightedVote",
    "WeightedVoteOutput",
    "build_graph",
    "estimate_num_calls",
    "vote_accuracy",
]
