"""Benchmark the embedded local model: load time, tokens/s at several batch sizes, peak RSS.

    python bench/bench_local_model.py                        # SmolLM2-135M, batches 1, 8, 32
    python bench/bench_local_model.py --model /path/x.gguf --batches 1,16,64 --new-tokens 128
    python bench/bench_local_model.py --bandwidth-gbs 3350   # compare decode steps to a memory-bandwidth bound
    python bench/bench_local_model.py --precisions float32,bfloat16,int8   # one table per weight precision

Every row generates exactly ``--new-tokens`` tokens (``ignore_eos``) from its own prompt
(no shared-prefix shortcut), greedily. Each batch size is run once to compile ("1st run s",
compiles included), then timed ``--repeats`` times, interleaved, best kept. Prefill is timed with
``max_new_tokens=1``; decode time is the rest, so "decode tok/s" is the steady batched
decode rate and "e2e tok/s" includes the prefill. Then an ensemble, 8 samples of one
prompt, runs one by one and micro-batched. Runs on whatever device JAX picks, so the same
script measures a GPU; there, or with ``--bandwidth-gbs``, it also prints the decode step
time against the memory-bandwidth bound: every step reads every weight once (bytes =
parameter bytes), so ``bound = parameter bytes / bandwidth``. With ``--precisions``, the model is loaded and measured once per
precision (default: :func:`ember.local.default_precision`), and a closing table puts their
decode tok/s side by side.

Two comparisons close the run:

- ``--llama-cpp PYTHON``: llama.cpp on the same GGUF file and the same prompt token ids, in
  this sitting, by ``bench/_llama_cpp.py`` run with ``PYTHON`` (a separate venv with
  ``llama-cpp-python``; never the project's), ``--llama-threads`` threads (default 2).
  It runs once before Ember's runs and once after, and its best counts, as Ember's best
  repeat does. Prints Ember / llama.cpp decode tok/s per batch size (issue 14's goals:
  >= 0.5x at batch 1, >= 1x at batch 8).
- ``--first-token``: time to the first token of an 8-request burst through the
  micro-batcher in a fresh process: with an empty compilation cache (cold), again with the
  cache that run left (warm cache, new process), and a second burst in the same process
  (warm).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from _local import story_prompts, timed

# Peak HBM bandwidth (GB/s) of devices we know, matched against jax's ``device_kind``.
KNOWN_BANDWIDTH_GBS = {
    "H200": 4800.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,  # SXM, HBM3
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,  # 40 GB
    "L40S": 864.0,
    "L4": 300.0,
    "A10G": 600.0,
    "V100": 900.0,
    "TPU v5 lite": 819.0,
    "TPU v5p": 2765.0,
    "TPU v4": 1200.0,
}


def detect_bandwidth(device_kind: str) -> float | None:
    for name, gbs in KNOWN_BANDWIDTH_GBS.items():  # most specific names first
        if name.lower() in device_kind.lower():
            return gbs
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="embedded model name or GGUF path (default: SmolLM2-135M)")
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bandwidth-gbs", type=float, default=None, help="device memory bandwidth, GB/s")
    parser.add_argument(
        "--precisions", default=None, help="comma-separated weight precisions: float32, bfloat16, int8 (default: the default)"
    )
    parser.add_argument("--llama-cpp", metavar="PYTHON", default=None, help="a Python with llama-cpp-python, to compare")
    parser.add_argument("--llama-threads", type=int, default=2)
    parser.add_argument("--first-token", action="store_true", help="time to first token, cold and warm")
    args = parser.parse_args()
    if args.first_token:
        first_token(args.model)

    start = time.perf_counter()
    import jax

    from ember.local import default_precision

    import_s = time.perf_counter() - start
    device = jax.devices()[0]
    print(f"device: {device.platform} / {device.device_kind} ({jax.device_count()} device(s))")
    print(f"import: {import_s:.2f} s")
    precisions = args.precisions.split(",") if args.precisions else [default_precision()]
    batches = [int(b) for b in args.batches.split(",")]
    summary = {}
    # llama.cpp runs before and after Ember and its best counts, as Ember's best repeat does:
    # a shared machine's bursts of load then cannot land on one side only.
    llama_runs = [llama_cpp_rates(args, batches)] if args.llama_cpp else []
    for precision in precisions:
        print(f"\n==================== precision: {precision}")
        summary[precision] = bench_precision(args, precision, batches, device)
    if len(precisions) > 1:
        print(f"\n{'decode tok/s':>12} " + " ".join(f"{'batch ' + str(b):>9}" for b in batches) + f" {'weights MB':>10}")
        for precision, (rates, mb) in summary.items():
            print(f"{precision:>12} " + " ".join(f"{rates[b][1]:>9.1f}" for b in batches) + f" {mb:>10.0f}")
        print(f"{'e2e tok/s':>12}")
        for precision, (rates, _) in summary.items():
            print(f"{precision:>12} " + " ".join(f"{rates[b][2]:>9.1f}" for b in batches))
    if args.llama_cpp:
        llama_runs.append(llama_cpp_rates(args, batches))
        against_llama_cpp(args, batches, summary, llama_runs)


_load_seconds: dict[str, float] = {}


def loaded(args, precision: str):
    """``load_model`` of ``precision``, and how long its first load in this process took."""
    from ember.local import load_model

    start = time.perf_counter()
    model = load_model(args.model, precision=precision)
    return model, _load_seconds.setdefault(precision, time.perf_counter() - start)


def llama_cpp_rates(args, batches: list[int]) -> tuple[str, dict[int, float]]:
    """One run of llama.cpp on the same file and prompt tokens: its version, and its decode
    tok/s per batch size."""
    from ember.local import default_precision

    model, _ = loaded(args, (args.precisions or default_precision()).split(",")[0])
    job = {
        "model": str(model.path),
        "prompts": {b: [model.encode(p) for p in story_prompts(b)] for b in batches},
        "new_tokens": args.new_tokens,
        "threads": args.llama_threads,
        "repeats": args.repeats,
    }
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_llama_cpp.py")
    done = subprocess.run(
        [args.llama_cpp, script], input=json.dumps(job), capture_output=True, text=True, check=False, timeout=3600
    )
    if done.returncode != 0:
        raise SystemExit(f"llama.cpp run failed ({done.returncode}): {done.stderr.strip()[-600:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    rates = {}
    for b in batches:
        prefill, total = found["best"][str(b)]
        rates[b] = b * (args.new_tokens - 1) / max(total - prefill, 1e-9)
    return found["version"], rates


def against_llama_cpp(args, batches: list[int], summary: dict, runs: list[tuple[str, dict[int, float]]]) -> None:
    """Ember's decode tok/s against llama.cpp's best run, per batch size."""
    llama = {b: max(rates[b] for _, rates in runs) for b in batches}
    print(f"\nllama.cpp (llama-cpp-python {runs[0][0]}, {args.llama_threads} threads, same GGUF and prompt "
          f"tokens; best of a run before and a run after Ember's)")  # fmt: skip
    print(f"{'decode tok/s':>12} " + " ".join(f"{'batch ' + str(b):>9}" for b in batches))
    print(f"{'llama.cpp':>12} " + " ".join(f"{llama[b]:>9.1f}" for b in batches))
    print("Ember / llama.cpp, decode tok/s:")
    for precision, (rates, _) in summary.items():
        print(f"{precision:>12} " + " ".join(f"{rates[b][1] / llama[b]:>8.2f}x" for b in batches))
    print("goals: >= 0.50x at batch 1, >= 1.00x at batch 8 (issue 14)")


_BURST = """
import sys, threading, time
from ember.local import GenerationConfig, compile_counts, load_model, shared_batcher
model = load_model(sys.argv[1] if len(sys.argv) > 1 else None)
batcher = shared_batcher(model, window_s=0.05, max_batch=8)
for burst in (1, 2):
    first = threading.Event()
    start = time.perf_counter()
    futures = [batcher.submit(f"Question {i}: name a colour.", GenerationConfig(max_new_tokens=16, temperature=0.7, seed=i),
                              on_tokens=lambda ids: first.set()) for i in range(8)]
    first.wait()
    ttft = time.perf_counter() - start
    [f.result() for f in futures]
    print(burst, ttft, time.perf_counter() - start, compile_counts()["compiles"], flush=True)
"""


def first_token(model: str | None) -> None:
    """Time to first token of an 8-request burst: cold cache, warm cache (new process), warm process."""
    print("time to first token, 8-request burst (micro-batched), fresh process each:")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "EMBER_COMPILE_CACHE": cache}
        for label in ("empty compilation cache", "warm compilation cache"):
            out = subprocess.run(
                [sys.executable, "-c", _BURST, *([model] if model else [])],
                env=env, capture_output=True, text=True, check=True, timeout=1800,
            ).stdout.split("\n")  # fmt: skip
            (_, ttft1, all1, compiles1), (_, ttft2, all2, compiles2) = (line.split()[:4] for line in out[:2])
            print(f"  {label:>24}: first burst  first token {float(ttft1):6.2f} s, all done {float(all1):6.2f} s ({compiles1} compiles)")
            print(f"  {'same process':>24}: second burst first token {float(ttft2):6.2f} s, all done {float(all2):6.2f} s "
                  f"({int(compiles2) - int(compiles1)} compiles)")  # fmt: skip


def bench_precision(args, precision: str, batches: list[int], device) -> tuple[dict, float]:
    """One precision's table; returns its rates per batch and its weight megabytes."""
    from ember.local import GenerationConfig

    model, load_s = loaded(args, precision)
    print(f"model: {model.path.name} ({model.param_bytes / 1e6:.0f} MB of {model.precision} weights, {model.dtype.name} compute)")
    print(f"load (parse + dequantize + place): {load_s:.2f} s")
    # Other processes on a small machine skew every number: say how busy it was.
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    n_new = args.new_tokens
    prefill_only = GenerationConfig(max_new_tokens=1, ignore_eos=True)
    full = GenerationConfig(max_new_tokens=n_new, ignore_eos=True)
    prompts = {b: [model.encode(p) for p in story_prompts(b)] for b in batches}
    first_run = {}
    for b in batches:
        start = time.perf_counter()
        model.generate_tokens(prompts[b], prefill_only)
        model.generate_tokens(prompts[b], full)
        first_run[b] = time.perf_counter() - start
    # Best of interleaved repeats: on a shared machine, load comes and goes; interleaving
    # lets every batch size meet the quiet moments.
    prefill_s = dict.fromkeys(batches, float("inf"))
    total_s = dict.fromkeys(batches, float("inf"))
    for _ in range(args.repeats):
        for b in batches:
            prefill_s[b] = min(prefill_s[b], timed(lambda p=prompts[b]: model.generate_tokens(p, prefill_only)))
            total_s[b] = min(total_s[b], timed(lambda p=prompts[b]: model.generate_tokens(p, full)))
    rates: dict[int, tuple[float, float, float]] = {}
    print(f"\n{'batch':>5} {'1st run s':>9} {'prefill s':>9} {'decode ms/step':>14} {'decode tok/s':>12} {'e2e tok/s':>9}")
    for b in batches:
        step_s = max(total_s[b] - prefill_s[b], 1e-9) / (n_new - 1)
        rates[b] = (step_s, b / step_s, b * n_new / total_s[b])
        print(f"{b:>5} {first_run[b]:>9.1f} {prefill_s[b]:>9.2f} {step_s * 1e3:>14.1f} {rates[b][1]:>12.1f} {rates[b][2]:>9.1f}")

    # An ensemble: 8 samples of one prompt, one by one vs micro-batched into one generation.
    samples = [GenerationConfig(max_new_tokens=32, temperature=0.7, seed=i, ignore_eos=True) for i in range(8)]
    prompt = model.encode(story_prompts(1)[0])
    model.generate_tokens([prompt], samples[:1])
    model.generate_tokens([prompt] * 8, samples)
    one_by_one = batched = float("inf")
    for _ in range(args.repeats):
        one_by_one = min(one_by_one, timed(lambda: [model.generate_tokens([prompt], [c]) for c in samples]))
        batched = min(batched, timed(lambda: model.generate_tokens([prompt] * 8, samples)))
    print(
        f"\nensemble of 8 samples x 32 tokens: one by one {one_by_one:.2f} s, batched {batched:.2f} s "
        f"({one_by_one / batched:.1f}x)"
    )

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"\npeak RSS: {peak_rss_mb:.0f} MB   load average after: {os.getloadavg()[0]:.2f}")
    if 1 in rates and 32 in rates:
        print(
            f"batch32/batch1 throughput: decode {rates[32][1] / rates[1][1]:.1f}x, "
            f"end-to-end {rates[32][2] / rates[1][2]:.1f}x (goal >= 10x)"
        )
    bandwidth = args.bandwidth_gbs or detect_bandwidth(device.device_kind)
    if bandwidth is None:
        print("memory-bandwidth bound: unknown device bandwidth (pass --bandwidth-gbs)")
        return rates, model.param_bytes / 1e6
    bound_s = model.param_bytes / (bandwidth * 1e9)
    print(f"memory-bandwidth bound at {bandwidth:.0f} GB/s: {bound_s * 1e3:.3f} ms/step (weights read once per step)")
    for batch, (step_s, _, _) in rates.items():
        print(f"  batch {batch:>3}: {step_s * 1e3:.3f} ms/step = {bound_s / step_s * 100:.0f}% of the bound's speed")
    return rates, model.param_bytes / 1e6


if __name__ == "__main__":
    main()
