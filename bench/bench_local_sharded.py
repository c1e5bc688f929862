"""Benchmark sharded local generation: one batch split over N devices' batch axis vs one device.

    python bench/bench_local_sharded.py                         # 8 fake CPU devices: a correctness check
    python bench/bench_local_sharded.py --batch 64 --new-tokens 64 --bandwidth-gbs 3350

Every row generates exactly ``--new-tokens`` tokens (``ignore_eos``), greedily, from its own
prompt. The same batch runs unsharded on the first device and with ``mesh=`` over the first
``--devices`` devices (a 1-D "batch" mesh, weights replicated on each); the tokens must be
equal. Each configuration runs once to compile, then ``--repeats`` times interleaved, best
kept. Prefill is timed with ``max_new_tokens=1``; the decode step is the rest divided by the
remaining steps.

On CPU the devices are fake (``--xla_force_host_platform_device_count``): they share the same
cores, so the ratio is only a check that sharding works and costs little, not a speedup. On
an accelerator, each device reads all its replicated weights once per decode step, so the
step's lower bound is ``parameter bytes / HBM bandwidth`` whatever the device count, and N
devices should give close to N times the tokens/s of one at the same per-device batch.
"""

from __future__ import annotations

import argparse
import os

# Before jax is imported: XLA reads the flag once, at backend start. Only the host platform uses it.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

from _local import story_prompts, timed

H200_BANDWIDTH_GBS = 4800.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="embedded model name or GGUF path (default: SmolLM2-135M)")
    parser.add_argument("--devices", type=int, default=None, help="devices to shard over (default: all, at most 8)")
    parser.add_argument("--batch", type=int, default=None, help="rows per generation (default: 4 per device)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bandwidth-gbs", type=float, default=H200_BANDWIDTH_GBS,
                        help="device HBM bandwidth, GB/s (default: H200's 4800)")  # fmt: skip
    args = parser.parse_args()

    import jax

    from ember.local import GenerationConfig, batch_mesh, load_model

    model = load_model(args.model)
    backend = jax.default_backend()
    n_dev = args.devices or min(jax.device_count(), 8)
    batch = args.batch or 4 * n_dev
    mesh = batch_mesh(n_dev)
    device = jax.devices()[0]
    print(f"model: {model.path.name} ({model.param_bytes / 1e6:.0f} MB of {model.dtype.name} weights)")
    print(f"backend: {backend} / {device.device_kind}; sharded over {n_dev} of {jax.device_count()} device(s)")
    print(
        f"batch {batch} rows x {args.new_tokens} new tokens, greedy; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    if backend == "cpu":
        print("NOTE: fake CPU devices share the same cores: the ratio below is a correctness check, not a speedup")

    prompts = [model.encode(p) for p in story_prompts(batch)]
    full = GenerationConfig(max_new_tokens=args.new_tokens, ignore_eos=True)
    prefill_only = GenerationConfig(max_new_tokens=1, ignore_eos=True)
    setups = {"1 device": None, f"{n_dev} devices": mesh} if mesh is not None else {"1 device": None}
    tokens = {}
    for label, m in setups.items():  # compile, and keep the tokens to compare
        model.generate_tokens(prompts, prefill_only, mesh=m)
        tokens[label] = [g.token_ids for g in model.generate_tokens(prompts, full, mesh=m)]
    if mesh is not None:
        same = tokens["1 device"] == tokens[f"{n_dev} devices"]
        print(f"sharded tokens equal unsharded: {same}")
    prefill_s = dict.fromkeys(setups, float("inf"))
    total_s = dict.fromkeys(setups, float("inf"))
    for _ in range(args.repeats):
        for label, m in setups.items():
            prefill_s[label] = min(
                prefill_s[label], timed(lambda m=m: model.generate_tokens(prompts, prefill_only, mesh=m))
            )
            total_s[label] = min(total_s[label], timed(lambda m=m: model.generate_tokens(prompts, full, mesh=m)))

    bound_s = model.param_bytes / (args.bandwidth_gbs * 1e9)
    rates = {}
    print(f"\n{'setup':>10} {'prefill s':>9} {'step ms':>8} {'e2e tok/s':>10} {'tok/s/device':>12}")
    for label, m in setups.items():
        devices = 1 if m is None else n_dev
        step_s = max(total_s[label] - prefill_s[label], 1e-9) / max(args.new_tokens - 1, 1)
        rates[label] = batch * args.new_tokens / total_s[label]
        print(
            f"{label:>10} {prefill_s[label]:>9.2f} {step_s * 1e3:>8.2f} {rates[label]:>10.1f} {rates[label] / devices:>12.1f}"
        )
        if backend != "cpu":
            print(f"{'':>10} decode step {step_s * 1e3:.3f} ms vs bound {bound_s * 1e3:.3f} ms "
                  f"(weights / {args.bandwidth_gbs:.0f} GB/s per device) = {bound_s / step_s * 100:.0f}% of it")  # fmt: skip
    if mesh is not None:
        ratio = rates[f"{n_dev} devices"] / rates["1 device"]
        what = "correctness check only (fake devices, shared cores)" if backend == "cpu" else f"ideal {n_dev}x"
        print(f"\nsharded / unsharded tokens/s: {ratio:.2f}x ({what})")


if __name__ == "__main__":
    main()
