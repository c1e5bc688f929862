"""Operators: typed, frozen, pytree-registered units of computation, and the core operators.

>>> from ember.operators import Operator, Specification, EmberModel
"""

from ember.operators._ensemble import Ensemble, EnsembleInput, EnsembleOutput
from ember.operators._errors import (
    InvalidInputError,
    InvalidOutputError,
    OperatorNotFoundError,
    RoutingError,
    SpecificationError,
    StructuredOutputError,
)
from ember.operators._field import field
from ember.operators._filters import combine, is_array, partition
from ember.operators._intercept import CallHook, current_hook, intercept_calls
from ember.operators._lm import LMModule, LMOperator
from ember.operators._model import EmberModel, Record
from ember.operators._most_common import MostCommon, MostCommonInput, MostCommonOutput, majority_vote, normalize_answer
from ember.operators._operator import Operator
from ember.operators._parallel import Parallel
from ember.operators._registry import OperatorRegistry, operator_registry, register_operator
from ember.operators._router import Router
from ember.operators._select_best import SelectBest, SelectBestOutput
from ember.operators._sequential import Sequential
from ember.operators._specification import Specification
from ember.operators._synthesis import CandidatesInput, JudgeSynthesis, JudgeSynthesisOutput, Synthesis, SynthesisOutput
from ember.operators._verifier import Verifier, VerifierInput, VerifierOutput

__all__ = [
    "CallHook",
    "CandidatesInput",
    "EmberModel",
    "Ensemble",
    "EnsembleInput",
    "EnsembleOutput",
    "InvalidInputError",
    "InvalidOutputError",
    "JudgeSynthesis",
    "JudgeSynthesisOutput",
    "LMModule",
    "LMOperator",
    "MostCommon",
    "MostCommonInput",
    "MostCommonOutput",
    "Operator",
    "OperatorNotFoundError",
    "OperatorRegistry",
    "Parallel",
    "Record",
    "Router",
    "RoutingError",
    "SelectBest",
    "SelectBestOutput",
    "Sequential",
    "Specification",
    "SpecificationError",
    "StructuredOutputError",
    "Synthesis",
    "SynthesisOutput",
    "Verifier",
    "VerifierInput",
    "VerifierOutput",
    "combine",
    "current_hook",
    "field",
    "intercept_calls",
    "is_array",
    "majority_vote",
    "normalize_answer",
    "operator_registry",
    "partition",
    "register_operator",
]
