"""Networks of Networks: ensembles, judges, verifiers, votes, and compact notation.

Offline, Ember's loopback server (:mod:`ember.testing`) answers in place of the provider:

>>> import os
>>> from ember.testing import LoopbackServer
>>> server = LoopbackServer().start()
>>> os.environ.update(server.environ())
>>> from ember.api import non
>>> ensemble = non.UniformEnsemble(num_units=3, model_name="openai:gpt-4o")
>>> ensemble(inputs={"query": "What is 2 + 2?"}).responses
['4', '4', '4']
>>> non.MostCommon()(responses=["4", "four", "4."]).final_answer
'4'
>>> server.close()
"""

from ember.non._calls_estimator import CallsEstimate, estimate_num_calls, vote_accuracy
from ember.non._ensembles import UniformEnsemble, VariedEnsemble
from ember.non._notation import NODE_TYPES, NodeType, NotationError, build_graph, is_notation, parse_notation
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
    "NODE_TYPES",
    "CallsEstimate",
    "Ensemble",
    "Filter",
    "FilterVote",
    "JudgeSynthesis",
    "MostCommon",
    "NodeType",
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
    "is_notation",
    "parse_notation",
    "vote_accuracy",
]
