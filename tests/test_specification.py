"""Specifications: definition-time placeholder checks, validated rendering, JSON parsing."""

import json

import pytest
from pydantic import computed_field

from ember.api.operators import EmberModel, Specification
from ember.operators import InvalidInputError, SpecificationError, StructuredOutputError


# -- the seed's Prompt Specification example, as written ---------------------------------
class QuestionInput(EmberModel):
    question: str
    context: str


class AnswerOutput(EmberModel):
    answer: str
    confidence: float


class QASpecification(Specification):
    input_model = QuestionInput
    structured_output = AnswerOutput
    prompt_template = """
    Answer the question based on the context.

    Context: {context}
    Question: {question}
    """


def test_seed_specification_renders_its_inputs():
    prompt = QASpecification().render_prompt({"question": "Who?", "context": "Ada wrote it."})
    assert "Context: Ada wrote it." in prompt and "Question: Who?" in prompt
    assert QASpecification().render_prompt(QuestionInput(question="Q", context="C")).count("Q") == 2


def test_rendering_validates_inputs():
    with pytest.raises(InvalidInputError, match="context"):
        QASpecification().render_prompt({"question": "Who?"})
    with pytest.raises(InvalidInputError, match="question"):
        QASpecification().render_prompt({"question": ["not", "text"], "context": "c"})
    with pytest.raises(InvalidInputError, match="mapping or a model"):
        QASpecification().render_prompt("just a string")


def test_misspelt_placeholder_fails_when_the_class_is_defined():
    with pytest.raises(SpecificationError, match=r"\{qestion\}.*Did you mean: question"):

        class Broken(Specification):
            input_model = QuestionInput
            prompt_template = "Q: {qestion}"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Q: {}", "must name an input field"),
        ("Q: {0}", "must name an input field"),
        ("unbalanced { brace", "not a valid format string"),
        ("{question:>{width}}", r"\{width\}"),
    ],
)
def test_malformed_templates_are_rejected(template, message):
    with pytest.raises(SpecificationError, match=message):
        Specification(input_model=QuestionInput, prompt_template=template)


def test_placeholders_need_an_input_model_and_models_must_be_pydantic():
    with pytest.raises(SpecificationError, match="no input_model"):
        Specification(prompt_template="Hello {name}")
    with pytest.raises(SpecificationError, match="must be an EmberModel class"):
        Specification(input_model=dict)
    assert Specification(prompt_template="No placeholders, {{literal}} braces").render_prompt({}) == (
        "No placeholders, {literal} braces"
    )


def test_templates_may_use_attributes_indexes_and_properties():
    class Items(EmberModel):
        items: list[str]
        width: int = 6

        @property
        def listing(self) -> str:
            return ", ".join(self.items)

        @computed_field
        @property
        def count(self) -> int:
            return len(self.items)

    spec = Specification(input_model=Items, prompt_template="{items[0]:>{width}}|{listing}|{count}")
    assert spec.render_prompt({"items": ["a", "b"]}) == "     a|a, b|2"


def test_structured_output_parsing_accepts_bare_fenced_and_wrapped_json():
    spec = QASpecification()
    payload = {"answer": "Ada", "confidence": 0.9}
    for text in (
        json.dumps(payload),
        f"```json\n{json.dumps(payload)}\n```",
        f"Sure! Here it is: {json.dumps(payload)} Hope that helps.",
    ):
        assert spec.parse_output(text) == AnswerOutput(answer="Ada", confidence=0.9)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I think it is Ada.", "no JSON object found"),
        ('{"answer": "Ada", "confidence": ', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"answer": "Ada"}', "confidence: Field required"),
        ('{"answer": "Ada", "confidence": "high"}', "confidence: Input should be a valid number"),
    ],
)
def test_invalid_structured_output_raises_a_typed_error(text, reason):
    with pytest.raises(StructuredOutputError, match=reason) as info:
        QASpecification().parse_output(text)
    assert info.value.attempts == 1 and info.value.text == text[:200]


def test_schemas_and_instructions_describe_the_models():
    spec = QASpecification()
    schema = spec.output_schema()
    assert schema["required"] == ["answer", "confidence"]
    assert schema["properties"]["confidence"]["type"] == "number"
    assert spec.input_schema()["properties"].keys() == {"question", "context"}
    assert json.dumps(schema, separators=(",", ":")) in spec.output_instructions()
    with pytest.raises(SpecificationError, match="no structured_output"):
        Specification(input_model=QuestionInput).output_schema()


def test_repair_prompt_shows_the_answer_and_the_error():
    spec = QASpecification()
    with pytest.raises(StructuredOutputError) as info:
        spec.parse_output('{"answer": "Ada"}')
    messages = spec.repair_prompt("original prompt", '{"answer": "Ada"}', info.value)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == '{"answer": "Ada"}'
    assert "confidence: Field required" in messages[2]["content"]
    assert "JSON schema" in messages[2]["content"]


def test_output_validation_can_see_the_inputs():
    from pydantic import ValidationInfo, field_validator

    class Pick(EmberModel):
        index: int

        @field_validator("index")
        @classmethod
        def in_range(cls, value: int, info: ValidationInfo) -> int:
            if value >= len(info.context["inputs"].items):
                raise ValueError("out of range")
            return value

    class Items(EmberModel):
        items: list[str]

    spec = Specification(input_model=Items, structured_output=Pick)
    assert spec.parse_output('{"index": 1}', inputs=Items(items=["a", "b"])).index == 1
    with pytest.raises(StructuredOutputError, match="out of range"):
        spec.parse_output('{"index": 2}', inputs=Items(items=["a", "b"]))
