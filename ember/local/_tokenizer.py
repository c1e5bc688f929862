"""The model's tokenizer, rebuilt with Hugging Face ``tokenizers`` from a GGUF's metadata.

A GGUF carries the vocabulary, the BPE merges, the token types and the name of the
pre-tokenizer (``tokenizer.ggml.pre``), which is everything a byte-level BPE tokenizer
needs; no ``tokenizer.json`` and no network. The pre-tokenizer names map to the same
splitting rules llama.cpp applies for them (``llama-vocab.cpp``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from ember.local._errors import UnsupportedModelError

__all__ = ["GGUFTokenizer"]

# llama.cpp's token types (gguf.TokenType): 3 = CONTROL, 4 = USER_DEFINED.
_CONTROL, _USER_DEFINED = 3, 4

_LLAMA3_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(use_regex: bool) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)


def _pre_tokenizer(name: str) -> tuple[pre_tokenizers.PreTokenizer, bool] | None:
    """(pre-tokenizer, ignore_merges) for a ``tokenizer.ggml.pre`` name, or None if unknown."""
    if name in ("gpt-2", "gpt2"):
        return _byte_level(True), False
    if name in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"):
        # Each digit is its own pre-token, then GPT-2's split (llama.cpp: "\p{N}" + GPT-2 regex).
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level(True)]), False
    if name in ("llama-bpe", "llama3", "smaug-bpe", "falcon3", "pixtral"):
        split = pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated")
        return pre_tokenizers.Sequence([split, _byte_level(False)]), True
    return None


class GGUFTokenizer:
    """Encode and decode text for one GGUF model; knows its special token ids."""

    def __init__(self, meta: Mapping[str, Any], *, model: str | None = None) -> None:
        """Build from GGUF metadata; ``model`` only names the file in errors.

        Raises :class:`UnsupportedModelError` for a tokenizer that is not byte-level BPE
        or a pre-tokenizer name we have no splitting rules for.
        """
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise UnsupportedModelError(
                f"tokenizer model {kind!r} is not supported by ember.local; it reads byte-level BPE "
                "('gpt2') tokenizers, as used by SmolLM2 and Llama 3",
                model=model,
            )
        pre_name = meta.get("tokenizer.ggml.pre", "gpt-2")
        pre = _pre_tokenizer(pre_name)
        if pre is None:
            raise UnsupportedModelError(f"unknown GGUF pre-tokenizer {pre_name!r}", model=model)
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        pre_tokenizer, ignore_merges = pre
        tok = Tokenizer(
            models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=ignore_merges)
        )
        tok.pre_tokenizer = pre_tokenizer
        tok.decoder = decoders.ByteLevel()
        types = list(meta.get("tokenizer.ggml.token_type", ()))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL])
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED])
        self._tok = tok
        self._tokens = tokens
        self.vocab_size = len(tokens)
        self.bos_id: int | None = meta.get("tokenizer.ggml.bos_token_id")
        self.eos_id: int | None = meta.get("tokenizer.ggml.eos_token_id")
        self.add_bos: bool = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and self.bos_id is not None
        pad = meta.get("tokenizer.ggml.padding_token_id")
        self.pad_id: int = int(pad if pad is not None else (self.eos_id or 0))
        ends = (meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom"))
        self.end_ids: frozenset[int] = frozenset(int(i) for i in ends if i is not None)

    def token_id(self, text: str) -> int | None:
        """The id of a token spelled exactly ``text`` (e.g. ``"<|im_end|>"``), if any."""
        return self._tok.token_to_id(text)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in it are recognised; BOS is
        prepended when the model asks for it (``tokenizer.ggml.add_bos_token``)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if self.add_bos else ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [[self.bos_id, *e.ids] if self.add_bos else e.ids for e in encoded]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, without special tokens."""
        return self._tok.decode(list(ids), skip_special_tokens=True)
