"""tensorflow-datasets builders for benchmarks, read from official files in a local directory."""

from ember.data.builders._aime import AIME
from ember.data.builders._base import BenchmarkBuilder, BenchmarkSource, shuffle_options
from ember.data.builders._commonsenseqa import CommonsenseQA
from ember.data.builders._gpqa import GPQA
from ember.data.builders._gsm8k import GSM8K
from ember.data.builders._halueval import HaluEval
from ember.data.builders._mmlu import MMLU
from ember.data.builders._truthfulqa import TruthfulQA

__all__ = [
    "BenchmarkBuilder",
    "BenchmarkSource",
    "shuffle_options",
    "BUILDERS",
    "MMLU",
    "GSM8K",
    "TruthfulQA",
    "CommonsenseQA",
    "HaluEval",
    "GPQA",
    "AIME",
]

#: Every benchmark builder, by Ember dataset name.
BUILDERS: dict[str, type[BenchmarkBuilder]] = {b.DATASET: b for b in (MMLU, GSM8K, TruthfulQA, CommonsenseQA, HaluEval, GPQA, AIME)}
