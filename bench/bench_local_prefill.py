"""How long a long prompt joining a running batch stalls the rows already decoding: chunked
prefill against the whole prompt at once, in one process.

    python bench/bench_local_prefill.py                      # 3 rows decoding, a 900-token joiner
    python bench/bench_local_prefill.py --joiner-tokens 1800 --chunk 256 --repeats 3

A generation of ``--rows`` rows with ``--prompt-tokens``-token prompts runs; once its first
tokens are out, one request with a ``--joiner-tokens`` prompt arrives and joins it. The
running rows report after every decode chunk; the longest gap between two reports is the
stall the join caused, and the median gap is a plain decode chunk. It runs with the joiner
prefilled ``--chunk`` tokens at a time (one chunk between decode chunks) and whole (one
call), each once to compile and then ``--repeats`` times, best kept. Also printed: the
joiner's own wait from arrival to its first token, which chunking lengthens (its prefill
shares the time with the decode chunks).

With 3 rows the joiner takes the batch's fourth, padding row. With 4 (``--rows 4``) the batch
also grows to 8 rows as it joins: that gap adds copying the KV cache to the larger batch and
a decode chunk of 8 rows, whichever way the prompt is prefilled.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from _local import story_prompts

from ember.local import GenerationConfig, GenerationRequest, load_model


class _OneArrival:
    """Arrivals (``ember.local.Arrivals``) that hand over one request once ``ready`` is set."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request: GenerationRequest | None = request
        self.ready = False
        self.taken_at: float | None = None

    def take(self, fits, limit: int) -> list[GenerationRequest]:
        request = self.request
        if not self.ready or request is None or limit < 1 or not fits(request.prompt_ids, request.config):
            return []
        self.request, self.taken_at = None, time.perf_counter()
        return [request]


def _ids(model, text: str, n: int) -> list[int]:
    ids = model.encode(text * (1 + 4 * n // max(1, len(model.encode(text)))), chat=False)[:n]
    if len(ids) < n:
        raise SystemExit(f"could not make a {n}-token prompt")
    return ids


def one_join(model, args, chunk: int) -> dict[str, float]:
    """One generation that a long prompt joins; the gaps its running rows saw, in seconds."""
    model.prefill_chunk = chunk
    reports: list[float] = []
    first_token: list[float] = []
    question = _ids(model, "Question: what did the keeper see from the lighthouse at night? ", args.joiner_tokens)

    def joiner_tokens(ids) -> None:
        if not first_token:
            first_token.append(time.perf_counter())

    arrival = _OneArrival(GenerationRequest(question, GenerationConfig(max_new_tokens=32), on_tokens=joiner_tokens))

    def on_tokens(ids) -> None:
        reports.append(time.perf_counter())
        arrival.ready = True

    rows = [
        GenerationRequest(
            _ids(model, prompt + " ", args.prompt_tokens),
            GenerationConfig(max_new_tokens=args.new_tokens, ignore_eos=True),
            on_tokens=on_tokens if i == 0 else None,
        )
        for i, prompt in enumerate(story_prompts(args.rows))
    ]
    chunks_before = model.stats.prefill_chunks
    model.serve(rows, arrivals=arrival, max_rows=args.rows + 1)
    if arrival.taken_at is None or not first_token:
        raise SystemExit("the long prompt did not join the running batch: use longer --prompt-tokens")
    gaps = [b - a for a, b in itertools.pairwise(reports)]
    return {
        "stall": max(gaps),
        "chunk": statistics.median(gaps),
        "joiner_first_token": first_token[0] - arrival.taken_at,
        "prefill_calls": model.stats.prefill_chunks - chunks_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="embedded model name or GGUF path (default: SmolLM2-135M)")
    parser.add_argument("--rows", type=int, default=3, help="rows decoding when the long prompt arrives")
    parser.add_argument("--prompt-tokens", type=int, default=1000, help="their prompt length")
    parser.add_argument("--joiner-tokens", type=int, default=900, help="the joining prompt's length")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens each running row generates")
    parser.add_argument("--chunk", type=int, default=128, help="prefill chunk, in tokens")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.joiner_tokens > args.prompt_tokens:
        raise SystemExit("--joiner-tokens must not exceed --prompt-tokens: a joiner's prompt must end below the batch's")
    model = load_model(args.model)
    print(f"model: {model.path.name} ({model.precision}); {args.rows} rows of {args.prompt_tokens}-token prompts "
          f"decoding, a {args.joiner_tokens}-token prompt joins")
    ways = {"chunked": args.chunk, "whole": 1 << 30}
    best: dict[str, dict[str, float]] = {}
    for round_ in range(1 + args.repeats):  # round 0 compiles
        for name, chunk in ways.items():
            run = one_join(model, args, chunk)
            if round_ and (name not in best or run["stall"] < best[name]["stall"]):
                best[name] = run
    print(f"{'prefill':>8} {'calls':>6} {'longest gap s':>14} {'median gap s':>13} {'joiner 1st token s':>19}")
    for name, run in best.items():
        calls = int(run["prefill_calls"]) or 1
        print(f"{name:>8} {calls:>6} {run['stall']:>14.3f} {run['chunk']:>13.3f} {run['joiner_first_token']:>19.3f}")
    chunked, whole = best["chunked"], best["whole"]
    print(f"longest gap, chunked / whole: {chunked['stall'] / whole['stall']:.2f}x; "
          f"chunked's longest gap / its median gap: {chunked['stall'] / chunked['chunk']:.2f}x")
    print(f"joiner's first token, chunked / whole: {chunked['joiner_first_token'] / whole['joiner_first_token']:.2f}x")


if __name__ == "__main__":
    main()
