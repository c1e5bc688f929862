"""llama.cpp's decode speed on the same GGUF and the same prompt tokens, for a ratio in one sitting.

Run by ``bench_local_model.py --llama-cpp PYTHON`` with the Python of a *separate* venv
that has ``llama-cpp-python`` (never the project's venv); it imports nothing from Ember.
Reads a JSON job on stdin (GGUF path, prompt token ids per batch size, new tokens, threads,
repeats) and prints one JSON line: per batch size, the best prefill and total seconds.

Every sequence is its own ``seq_id`` in one ``llama_batch``, so batch B is B sequences
decoded together, one token each per ``llama_decode``; greedy argmax; end-of-turn tokens
are fed on like any other (as Ember's ``ignore_eos``).
"""

from __future__ import annotations

import json
import sys
import time

import llama_cpp as lc
import numpy as np


def _load(path: str, threads: int, n_ctx: int, n_seq: int):
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(path.encode(), lc.llama_model_default_params())
    if not model:
        raise SystemExit(f"llama.cpp could not load {path}")
    params = lc.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, n_ctx, n_ctx, n_seq
    params.n_threads = params.n_threads_batch = threads
    return model, lc.llama_init_from_model(model, params)


def _fill(batch, entries: list[tuple[int, int, int, bool]]) -> None:
    """``entries``: (token, position, sequence, wants logits)."""
    for i, (token, pos, seq, logits) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
    batch.n_tokens = len(entries)


def _generate(ctx, batch, vocab_size: int, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
    """Seconds to the prefill's logits and to the last token."""
    lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
    start = time.perf_counter()
    entries = [(t, p, s, p == len(ids) - 1) for s, ids in enumerate(prompts) for p, t in enumerate(ids)]
    _fill(batch, entries)
    if lc.llama_decode(ctx, batch) != 0:
        raise SystemExit("llama_decode failed on the prefill")
    rows = [i for i, e in enumerate(entries) if e[3]]
    prefill = time.perf_counter() - start
    for step in range(new_tokens - 1):
        nxt = []
        for s, row in enumerate(rows):
            logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, row), shape=(vocab_size,))
            nxt.append((int(logits.argmax()), len(prompts[s]) + step, s, True))
        _fill(batch, nxt)
        if lc.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed while decoding")
        rows = list(range(len(prompts)))
    return prefill, time.perf_counter() - start


def main() -> None:
    job = json.load(sys.stdin)
    prompts_by_batch = {int(b): p for b, p in job["prompts"].items()}
    widest = max(len(p) for p in prompts_by_batch.values())
    longest = max(len(ids) for p in prompts_by_batch.values() for ids in p)
    n_ctx = 1 << (widest * (longest + job["new_tokens"])).bit_length()
    model, ctx = _load(job["model"], job["threads"], n_ctx, widest)
    vocab_size = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(n_ctx, 0, widest)
    best = {}
    for prompts in prompts_by_batch.values():
        _generate(ctx, batch, vocab_size, prompts, 4)  # warm
    for _ in range(job["repeats"]):
        for b, prompts in prompts_by_batch.items():
            prefill, total = _generate(ctx, batch, vocab_size, prompts, job["new_tokens"])
            old = best.get(b, (float("inf"), float("inf")))
            best[b] = (min(old[0], prefill), min(old[1], total))
    lc.llama_batch_free(batch)
    print(json.dumps({"version": getattr(lc, "__version__", "?"), "best": best}))


if __name__ == "__main__":
    main()
