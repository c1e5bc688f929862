"""Continuous batching: requests that arrive during a generation join it between chunks.

Checked structurally (generate calls, joined rows, batch growth, the order futures resolve
in), never by wall-clock thresholds; and every joined answer is checked against the same
request generated on its own, so a wrong cache placement cannot pass.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import textwrap
import threading

import pytest

from ember.local import GenerationConfig, MicroBatcher

pytestmark = pytest.mark.slow

LONG = GenerationConfig(max_new_tokens=160, ignore_eos=True)
SHORT = GenerationConfig(max_new_tokens=12)
SAMPLED = GenerationConfig(max_new_tokens=12, temperature=0.8, seed=7)


def _start_long(batcher: MicroBatcher, prompt: str = "Count from 1 to 100.", gate: threading.Event | None = None):
    """Submit a long generation and return its future once its first tokens exist. With
    ``gate``, the generating thread waits for it after every chunk (in the stream callback)."""
    running = threading.Event()

    def on_tokens(ids) -> None:
        running.set()
        if gate is not None:
            gate.wait()

    future = batcher.submit(prompt, LONG, on_tokens=on_tokens)
    assert running.wait(300), "the long generation never started"
    return future


def test_requests_arriving_during_a_generation_join_it_and_finish_first(smollm):
    batcher = MicroBatcher(smollm, window_s=0.01, max_batch=8)
    long = _start_long(batcher)
    before = dict(vars(smollm.stats))
    questions = ["What is 2 + 3?", "Name a colour.", "What is the capital of France?"]
    configs = [SHORT] * 3 + [SAMPLED]
    prompts = [*questions, "Tell me a word."]
    streamed: list[tuple[int, ...]] = []
    joiners = [batcher.submit(p, c) for p, c in zip(prompts[:3], configs[:3])]
    joiners.append(batcher.submit(prompts[3], SAMPLED, on_tokens=streamed.append))

    concurrent.futures.wait(joiners, timeout=300)
    assert not long.done(), "the joined requests should finish before the long generation"
    assert long.result(timeout=300).completion_tokens == LONG.max_new_tokens
    batcher.close()

    delta = {k: v - before[k] for k, v in vars(smollm.stats).items()}
    assert delta["generate_calls"] == 0  # no new generation: they were served by the running one
    assert delta["joined_rows"] == 4
    assert delta["growths"] >= 1  # the one-row batch grew to hold them
    results = [f.result() for f in joiners]
    assert streamed and streamed[-1][: len(results[3].token_ids)] == results[3].token_ids

    alone = smollm.generate(prompts, configs)  # same requests, their own batch (greedy and seeded)
    assert [r.token_ids for r in results] == [a.token_ids for a in alone]
    assert [r.text for r in results] == [a.text for a in alone]


def test_a_request_that_does_not_fit_the_running_cache_waits_for_the_next_batch(smollm):
    batcher = MicroBatcher(smollm, window_s=0.01, max_batch=8)
    long = _start_long(batcher, "Hi.")  # a short prompt: the shared write slot starts low
    before = smollm.stats.generate_calls
    question = "Summarise this: " + "the cat sat on the mat. " * 40  # its prompt cannot end below the slot
    late = batcher.submit(question, SHORT)
    answer = late.result(timeout=300)
    assert long.done()  # it had to wait for the long generation to end
    assert smollm.stats.generate_calls - before == 1
    batcher.close()
    assert answer.token_ids == smollm.generate([question], SHORT)[0].token_ids


SENTENCE = "The cat sat on the mat and looked at the birds in the garden. "
LONG_PROMPT = "Summarise this: " + SENTENCE * 24  # the shared write slot starts high
CHUNKED_QUESTION = "What did the cat do? " + SENTENCE * 20  # a joiner of three prefill chunks


def _join_while_prefilling(smollm, on_chunk=None):
    """A long generation, and a long question that joins it once its first tokens are out;
    ``on_chunk(prefill chunks run so far, the question's future)`` runs on the generating
    thread at each of the long row's reports. Returns (the question's future, the long one's, prefill chunks seen by each of the
    long row's reports, the stats before)."""
    from ember.local._generate import PREFILL_CHUNK

    assert 2 * PREFILL_CHUNK < len(smollm.encode(CHUNKED_QUESTION)) <= 3 * PREFILL_CHUNK <= len(smollm.encode(LONG_PROMPT))
    batcher = MicroBatcher(smollm, window_s=0.01, max_batch=8)
    before = dict(vars(smollm.stats))
    submitted = threading.Event()
    chunks_seen: list[int] = []
    joiners = []

    def on_tokens(ids) -> None:
        chunks_seen.append(smollm.stats.prefill_chunks - before["prefill_chunks"])
        submitted.wait(60)
        if on_chunk is not None:
            on_chunk(chunks_seen[-1], joiners[0])

    long = batcher.submit(LONG_PROMPT, LONG, on_tokens=on_tokens)
    while not chunks_seen:
        threading.Event().wait(0.01)
    joiner = batcher.submit(CHUNKED_QUESTION, SHORT)
    joiners.append(joiner)
    submitted.set()
    joiner.result(timeout=300)
    long.result(timeout=300)
    batcher.close()
    return joiner, long, chunks_seen, before


def test_a_long_joining_prompt_prefills_in_chunks_while_the_others_decode(smollm):
    joiner, long, chunks_seen, before = _join_while_prefilling(smollm)
    assert long.result().completion_tokens == LONG.max_new_tokens
    delta = {k: v - before[k] for k, v in vars(smollm.stats).items()}
    assert delta["generate_calls"] == 1 and delta["joined_rows"] == 1  # it joined the running batch
    assert delta["prefill_chunks"] == 3
    # The long row gained tokens after the first chunk and after the second: decoding went on
    # between the chunks instead of waiting for the whole prompt.
    assert {1, 2} <= set(chunks_seen)
    assert joiner.result().token_ids == smollm.generate([CHUNKED_QUESTION], SHORT)[0].token_ids  # prefilled whole


def test_a_request_cancelled_while_its_prompt_prefills_never_joins(smollm):
    joiner, long, _, before = _join_while_prefilling(smollm, lambda chunks, joiner: chunks == 1 and joiner.cancel())
    stopped = joiner.result()
    assert stopped.finish_reason == "cancelled" and stopped.completion_tokens == 0
    delta = {k: v - before[k] for k, v in vars(smollm.stats).items()}
    assert delta["joined_rows"] == 0 and delta["prefill_chunks"] < 3  # its prefill stopped there
    assert long.result().completion_tokens == LONG.max_new_tokens


def test_a_request_cancelled_while_waiting_never_runs(smollm):
    batcher = MicroBatcher(smollm, window_s=0.01, max_batch=8)
    gate = threading.Event()
    long = _start_long(batcher, gate=gate)  # the generating thread now waits at the gate
    before = smollm.stats.joined_rows
    cancelled = batcher.submit("What is 1 + 1?", SHORT)
    assert cancelled.cancel()  # still waiting: nothing has taken it
    kept = batcher.submit("What is 2 + 2?", SHORT)
    gate.set()
    kept.result(timeout=300)
    long.result(timeout=300)
    batcher.close()
    assert cancelled.cancelled()
    assert smollm.stats.joined_rows - before == 1


def test_occupancy_counts_idle_rows(smollm):
    stats = smollm.stats
    row_steps, decoded = stats.row_steps, stats.decoded_tokens
    smollm.generate(["Hi.", "Count from 1 to 50."], [GenerationConfig(max_new_tokens=2, ignore_eos=True), LONG])
    spent, useful = stats.row_steps - row_steps, stats.decoded_tokens - decoded
    # Row 1 idles after its second token until the batch compacts to one row.
    assert 0 < useful < spent
    assert useful == 1 + LONG.max_new_tokens - 1


def test_cancelling_a_generating_request_stops_its_row_and_frees_its_place(smollm):
    batcher = MicroBatcher(smollm, window_s=0.01, max_batch=1)  # one row: the next request needs it
    gate = threading.Event()
    seen: list[int] = []

    def on_tokens(ids) -> None:
        seen.append(len(ids))
        gate.wait()

    long = batcher.submit("Count from 1 to 100.", LONG, on_tokens=on_tokens)
    while not seen:  # generating: its first tokens were reported
        threading.Event().wait(0.01)
    assert not long.cancel()  # already running: not cancellable as a future, but abandoned
    before = smollm.stats.generate_calls
    waiting = batcher.submit("What is 2 + 3?", SHORT)
    gate.set()
    waiting.result(timeout=300)
    batcher.close()
    stopped = long.result(timeout=10)
    assert stopped.finish_reason == "cancelled"
    assert stopped.completion_tokens < LONG.max_new_tokens
    assert smollm.stats.generate_calls == before  # the waiting request took the freed row


def test_a_program_may_exit_while_a_batch_still_runs():
    """Rows hand back answers before their batch ends, so a program can have what it asked for
    and exit mid-batch; the batcher's worker must not be inside XLA when the interpreter dies
    (that aborts the process), so exit abandons the batch between chunks."""
    code = textwrap.dedent(
        """
        from ember.local import GenerationConfig, load_model, shared_batcher
        batcher = shared_batcher(load_model(), window_s=0.2, max_batch=8)
        long = batcher.submit("Count from 1 to 500.", GenerationConfig(max_new_tokens=400, ignore_eos=True))
        short = batcher.submit("Say hi.", GenerationConfig(max_new_tokens=2))
        print(short.result(timeout=300).completion_tokens, long.done())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "False", done.stdout  # it did exit mid-batch
