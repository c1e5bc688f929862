"""Operators: the seed's examples as written, calling conventions, validation, registry."""

import dataclasses

import pytest
from helpers import SummarizerInput, SummarizerOutput, SummarizerSpec

from ember.api.operators import Operator
from ember.operators import (
    InvalidInputError,
    InvalidOutputError,
    MostCommon,
    OperatorNotFoundError,
    OperatorRegistry,
    Record,
    operator_registry,
)


# -- the seed's Operator System example, with its forward filled in ----------------------
class SummarizerOperator(Operator[SummarizerInput, SummarizerOutput]):
    specification = SummarizerSpec()

    def forward(self, *, inputs: SummarizerInput) -> SummarizerOutput:
        words = inputs.text.split()[: inputs.max_words]
        return SummarizerOutput(summary=" ".join(words), word_count=len(words))


def test_seed_operator_runs_with_every_calling_convention():
    op = SummarizerOperator()
    text = "one two three four five"
    expected = SummarizerOutput(summary="one two three", word_count=3)
    assert op(inputs={"text": text, "max_words": 3}) == expected
    assert op(inputs=SummarizerInput(text=text, max_words=3)) == expected
    assert op(text=text, max_words=3) == expected
    assert op(text=text).word_count == 5  # default max_words applies
    assert "in 3 words or less" in op.specification.render_prompt({"text": text, "max_words": 3})


def test_inputs_and_outputs_are_validated_with_typed_errors():
    op = SummarizerOperator()
    with pytest.raises(InvalidInputError, match="text: Field required"):
        op(inputs={"max_words": 3})
    with pytest.raises(InvalidInputError, match="max_words"):
        op(text="a", max_words="many")
    with pytest.raises(TypeError, match="not both"):
        op(inputs={"text": "a"}, max_words=3)

    class Sloppy(Operator[SummarizerInput, SummarizerOutput]):
        specification = SummarizerSpec()

        def forward(self, *, inputs):
            return {"summary": inputs.text}  # word_count missing

    with pytest.raises(InvalidOutputError, match="word_count: Field required"):
        Sloppy()(text="a")


def test_forward_may_return_a_dict_that_the_output_model_validates():
    class DictOut(Operator[SummarizerInput, SummarizerOutput]):
        specification = SummarizerSpec()

        def forward(self, *, inputs):
            return {"summary": inputs.text, "word_count": "1"}

    out = DictOut()(text="hi")
    assert isinstance(out, SummarizerOutput) and out.word_count == 1


def test_extra_input_fields_are_ignored_by_typed_operators():
    assert SummarizerOperator()(text="a b", max_words=1, query="carried along").summary == "a"


# -- the seed's Enhanced JIT examples: no specification, attribute access, custom __init__ --
class QuestionRefinement(Operator):
    def forward(self, *, inputs):
        return {"query": inputs.query.strip().rstrip("?") + "?"}


class Echo(Operator):
    def forward(self, *, inputs):
        return {"responses": [inputs.query] * 3}


class Pipeline(Operator):
    refiner: QuestionRefinement
    ensemble: Echo
    aggregator: MostCommon

    def __init__(self):
        self.refiner = QuestionRefinement()
        self.ensemble = Echo()
        self.aggregator = MostCommon()

    def forward(self, *, inputs):
        refined = self.refiner(inputs=inputs)
        answers = self.ensemble(inputs=refined)
        return self.aggregator(inputs=answers)


def test_seed_pipeline_with_custom_init_and_untyped_operators():
    out = Pipeline()(inputs={"query": "  what is ember  "})
    assert out.final_answer == "what is ember?"


def test_operators_without_a_specification_get_a_record():
    seen = []

    class Spy(Operator):
        def forward(self, *, inputs):
            seen.append(inputs)
            return inputs

    Spy()(inputs={"query": "q", "n": 2})
    assert isinstance(seen[0], Record) and seen[0].query == "q" and seen[0]["n"] == 2
    assert Spy()(inputs="raw") == "raw"  # non-mappings pass through untouched


def test_operators_are_frozen_dataclasses():
    class Scaled(Operator):
        factor: float = 2.0
        label: str = "x"

        def forward(self, *, inputs):
            return inputs.value * self.factor

    op = Scaled(factor=3.0)
    assert op(value=2) == 6.0
    assert repr(op) == "Scaled(factor=3.0, label='x')"
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.factor = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        del op.label
    with pytest.raises(TypeError):
        Operator()  # forward is abstract


def test_inherited_custom_init_is_kept():
    class Base(Operator):
        n: int

        def __init__(self, n: int):
            self.n = n

        def forward(self, *, inputs):
            return self.n

    class Child(Base):
        extra: int = 0  # an annotation alone must not replace Base.__init__

    assert Child(5)(inputs={}) == 5


def test_registry_finds_and_builds_operators():
    assert operator_registry.get("MostCommon") is MostCommon
    assert {"Ensemble", "JudgeSynthesis", "Verifier", "Sequential", "Router"} <= set(operator_registry.names())
    assert operator_registry.create("MostCommon")(responses=["a", "b", "b"]).final_answer == "b"
    with pytest.raises(OperatorNotFoundError, match="Did you mean: MostCommon"):
        operator_registry.get("MostComon")

    registry = OperatorRegistry()

    @registry.register(name="summarize")
    class Local(SummarizerOperator):
        pass

    assert "summarize" in registry and registry.create("summarize")(text="a").word_count == 1
    with pytest.raises(ValueError, match="already registered"):
        registry.register(SummarizerOperator, name="summarize")
    with pytest.raises(TypeError, match="only Operator subclasses"):
        registry.register(dict)
