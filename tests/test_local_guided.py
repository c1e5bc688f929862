"""Guided JSON decoding: the structure is forced, the values are the model's."""

import asyncio
import json

import pytest

from ember.local._guided import flat_fields, guided_json


def test_flat_fields_accepts_scalar_objects_only():
    schema = {"type": "object", "properties": {"reasoning": {"type": "string"}, "score": {"type": "number"}}}
    assert flat_fields(schema) == [("reasoning", "string"), ("score", "number")]
    assert flat_fields({"type": "object", "properties": {"xs": {"type": "array"}}}) is None
    assert flat_fields({"type": "string"}) is None and flat_fields(None) is None


def test_guided_json_forces_structure_and_escapes_values():
    calls = []

    async def step(prefix, stop, max_new_tokens):
        calls.append((prefix, stop, max_new_tokens))
        return {0: 'a "quoted" \\ value', 1: " 42 ", 2: "maybe"}[len(calls) - 1], 5

    fields = [("why", "string"), ("n", "integer"), ("ok", "boolean")]
    text, used = asyncio.run(guided_json(fields, step, max_tokens=12))
    assert json.loads(text) == {"why": 'a "quoted" \\ value', "n": 42, "ok": "maybe"}  # a bad boolean stays visible
    assert used == 15
    assert calls[0][0] == '{"why": "' and calls[0][1] == ('"', "\n")
    assert calls[1][0] == '{"why": "a \\"quoted\\" \\\\ value", "n": '
    assert [c[2] for c in calls] == [12, 7, 4]  # what is left, but at least a fair share


@pytest.mark.slow
def test_judge_on_the_local_model_answers_in_valid_json():
    from ember.operators import JudgeSynthesis

    judge = JudgeSynthesis(model_name="local:smollm2-135m-instruct", temperature=0.0, max_tokens=32)
    out = judge(inputs={"query": "What is 12 + 7?", "responses": ["19", "19", "18"]})
    assert out.final_answer.strip() and out.reasoning.strip()
