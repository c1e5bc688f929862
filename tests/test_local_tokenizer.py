"""The tokenizer and chat formats rebuilt from GGUF metadata (no weights are loaded here)."""

from __future__ import annotations

import pytest

from ember.local import UnsupportedModelError, resolve_model_path
from ember.local._chat import chat_format_from_template
from ember.local._gguf import read_gguf
from ember.local._messages import normalize_messages
from ember.local._tokenizer import GGUFTokenizer


@pytest.fixture(scope="module")
def meta():
    return read_gguf(resolve_model_path(), tensors=False).metadata


@pytest.fixture(scope="module")
def tok(meta):
    return GGUFTokenizer(meta, model="test.gguf")


def test_round_trip_of_mixed_text(tok):
    text = "Héllo, wörld! 2024 年 🚀\n\tindent  two  spaces"
    assert tok.decode(tok.encode(text)) == text


def test_digits_are_split_one_by_one(tok):
    # tokenizer.ggml.pre = "smollm": each digit is its own pre-token, as in llama.cpp.
    assert [tok.decode([i]) for i in tok.encode("2024")] == ["2", "0", "2", "4"]


def test_special_tokens_in_text_are_single_ids_and_skipped_on_decode(tok):
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == tok.token_id("<|im_start|>") == 1 and ids[-1] == tok.token_id("<|im_end|>") == 2
    assert tok.decode(ids) == "user\nhi"


def test_end_ids_and_padding_from_metadata(tok):
    assert tok.end_ids == frozenset({2}) and tok.pad_id == 2 and not tok.add_bos


def test_chatml_with_the_templates_default_system_prompt(meta):
    fmt = chat_format_from_template(meta["tokenizer.chat_template"], model="test.gguf")
    assert fmt.name == "chatml"
    assert fmt.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert fmt.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], add_generation_prompt=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
    )


def test_llama3_template_family():
    template = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    fmt = chat_format_from_template(template, model="test.gguf")
    assert fmt.render([{"role": "user", "content": " Hi "}]) == (
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_unknown_template_is_a_typed_error():
    with pytest.raises(UnsupportedModelError, match="chat template"):
        chat_format_from_template("{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}", model="x")


def test_unsupported_tokenizer_model_is_a_typed_error(meta):
    with pytest.raises(UnsupportedModelError, match="tokenizer model 'llama'"):
        GGUFTokenizer({**meta, "tokenizer.ggml.model": "llama"}, model="x")
    with pytest.raises(UnsupportedModelError, match="pre-tokenizer"):
        GGUFTokenizer({**meta, "tokenizer.ggml.pre": "mystery"}, model="x")


def test_prompts_are_plain_role_content_mappings():
    assert normalize_messages("Hi") == ({"role": "user", "content": "Hi"},)
    assert normalize_messages([{"role": "system", "content": "S"}]) == ({"role": "system", "content": "S"},)
    with pytest.raises(ValueError, match="unknown role"):
        normalize_messages([{"role": "robot", "content": "x"}])
    with pytest.raises(TypeError, match="'role' and 'content'"):
        normalize_messages([{"content": "x"}])
    with pytest.raises(TypeError, match="non-empty list"):
        normalize_messages([])
