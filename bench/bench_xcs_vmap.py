"""``ember.xcs.vmap`` against ``jax.vmap`` on arrays, and against a bare asyncio loop on prompts.

1. Arrays: a 2-layer MLP operator (``jax.Array`` weights, ``--width`` wide, plus a string
   field) over a ``--batch`` x width input, ``jax.jit(lambda op, x: vmap(op)(x=x).y)``
   against ``jax.jit(lambda op, x: jax.vmap(lambda xi: op(x=xi).y)(x))``: both compiled and
   warmed, then best of ``--array-repeat`` alternating timings with ``block_until_ready``;
   prints both and ember/jax (goal <= 1.05). The same un-jitted (eager) for information.
   With ``--devices 8`` (8 fake CPU devices through ``XLA_FLAGS``, set before JAX is
   imported) also ``mesh_sharded`` over the 8 devices against the jitted 1-device run.
2. Host: ``vmap(LMModule("openai:..."))`` over ``--items`` distinct prompts, through
   ModelService (per-model budget ``--concurrency``), to a loopback server in another
   process at ``--latency``; the baseline is a bare ``asyncio.gather`` over Ember's OpenAI
   provider adapter with a semaphore of the same size. Prints each wall against the
   latency-bound limit ceil(N / concurrency) x latency, calls/s and vmap/bare (goal <= 1.15).
   Each round uses fresh prompts (the response cache would otherwise answer repeats), and
   the answers are checked. Prompts to an LMModule start on the I/O loop without a worker
   thread each, so past ``--concurrency 64`` only the model's budget bounds them (an
   operator per item would be held to the 64-thread host width,
   ``ember.xcs._mapped.HOST_WIDTH``).

    python bench/bench_xcs_vmap.py [--part array|host|both] [--devices 8] [--items 1000]
                                   [--concurrency 64] [--latency 0.05] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _fake_devices(argv: list[str]) -> int:
    """``--devices N`` read before JAX is imported: XLA_FLAGS only count before that."""
    for i, arg in enumerate(argv):
        if arg.startswith("--devices="):
            return int(arg.split("=", 1)[1])
        if arg == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
    return 0


if __name__ == "__main__" and _fake_devices(sys.argv) > 1:
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={_fake_devices(sys.argv)}".strip()
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402 - after XLA_FLAGS
import jax.numpy as jnp  # noqa: E402

from ember.operators import EmberModel, Operator, Specification  # noqa: E402

MODEL = "openai:gpt-4o-mini"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("array", "host", "both"), default="both")
    parser.add_argument("--devices", type=int, default=0, help="fake CPU devices for mesh_sharded (e.g. 8)")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--array-repeat", type=int, default=100)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=5)
    return parser.parse_args()


# -- 1. arrays -------------------------------------------------------------------------------


class XIn(EmberModel):
    x: jax.Array


class YOut(EmberModel):
    y: jax.Array


class MLP(Operator[XIn, YOut]):
    """Two dense layers; ``name`` is a static (string) field."""

    specification = Specification(input_model=XIn, structured_output=YOut)
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array
    name: str = "mlp"

    def forward(self, *, inputs):
        hidden = jax.nn.relu(inputs.x @ self.w1 + self.b1)
        return YOut(y=hidden @ self.w2 + self.b2)


def best_of(work: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best wall of each callable (result blocked on), alternating so load lands on all."""
    for run in work.values():  # compile and warm
        jax.block_until_ready(run())
        jax.block_until_ready(run())
    times: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(repeat):
        for name, run in work.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def report(best: dict[str, float], goal: float | None = None) -> None:
    for name, wall in best.items():
        print(f"  {name:>26}: {wall * 1e3:8.3f} ms")
    baseline, *candidates = list(best)
    for candidate in candidates:
        ratio = best[candidate] / best[baseline]
        verdict = "" if goal is None else f"  (goal <= {goal}: {'met' if ratio <= goal else 'NOT met'})"
        print(f"  {candidate} / {baseline} = {ratio:.3f}{verdict}")


def array_part(args: argparse.Namespace) -> None:
    from ember.xcs import DeviceMesh, mesh_sharded, vmap

    d = args.width
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    op = MLP(
        w1=jax.random.normal(k1, (d, d)) / math.sqrt(d), b1=jnp.zeros(d),
        w2=jax.random.normal(k2, (d, d)) / math.sqrt(d), b2=jnp.zeros(d),
    )  # fmt: skip
    x = jax.random.normal(k3, (args.batch, d))

    def ember_vmap(op, x):
        return vmap(op)(x=x).y

    def jax_vmap(op, x):
        return jax.vmap(lambda xi: op(x=xi).y)(x)

    jit_ember, jit_jax = jax.jit(ember_vmap), jax.jit(jax_vmap)
    expected = jit_jax(op, x)
    assert jnp.allclose(jit_ember(op, x), expected, atol=1e-4) and jnp.allclose(ember_vmap(op, x), expected, atol=1e-4)

    print(f"MLP {d}x{d}x{d} over a {args.batch}x{d} batch, {jax.device_count()} {jax.default_backend()} device(s), "
          f"{os.cpu_count()} CPUs, best of {args.array_repeat}")  # fmt: skip
    print("jitted:")
    report(best_of({"jax.jit(jax.vmap)": lambda: jit_jax(op, x), "jax.jit(ember.vmap)": lambda: jit_ember(op, x)},
                   args.array_repeat), goal=1.05)  # fmt: skip
    print("eager (information):")
    report(best_of({"jax.vmap": lambda: jax_vmap(op, x), "ember.vmap": lambda: ember_vmap(op, x)},
                   max(5, args.array_repeat // 3)))  # fmt: skip

    if args.devices > 1:
        devices = jax.devices()
        assert len(devices) == args.devices, f"asked for {args.devices} devices, JAX has {len(devices)}"
        sharded_all = mesh_sharded(op, mesh=DeviceMesh(devices=devices))
        sharded_one = mesh_sharded(op, mesh=DeviceMesh(devices=devices[:1]))
        assert jnp.allclose(sharded_all(x=x).y, expected, atol=1e-4)
        jit_sharded = jax.jit(lambda op, x: mesh_sharded(op, mesh=DeviceMesh(devices=devices))(x=x).y)
        assert jnp.allclose(jit_sharded(op, x), expected, atol=1e-4)
        print(f"mesh_sharded on {len(devices)} fake CPU devices (they share the {os.cpu_count()} CPUs; "
              "called from Python it runs its own jit and places x on the mesh each call):")  # fmt: skip
        report(best_of({"jax.jit(jax.vmap), 1 dev": lambda: jit_jax(op, x),
                        "mesh_sharded, 1 device": lambda: sharded_one(x=x).y,
                        f"mesh_sharded, {len(devices)} devices": lambda: sharded_all(x=x).y,
                        f"jax.jit(mesh_sharded), {len(devices)} dev": lambda: jit_sharded(op, x)},
                       args.array_repeat))  # fmt: skip


# -- 2. host ---------------------------------------------------------------------------------


def ember_vmap_run(n: int, tag: str) -> int:
    from _loopback import numbered_prompts

    from ember.operators import LMModule
    from ember.xcs import vmap

    answers = vmap(LMModule(MODEL))(numbered_prompts(n, tag))
    assert answers == [str(i + 1) for i in range(n)], answers[:5]
    return len(answers)


def host_part(args: argparse.Namespace) -> None:
    from _loopback import bare_calls, compare, loopback_process, point_ember_at

    limit = math.ceil(args.items / args.concurrency) * args.latency
    with loopback_process(args.latency) as base_url:
        point_ember_at(base_url, concurrency=args.concurrency)
        asyncio.run(bare_calls(10, args.concurrency, base_url, "warm"))  # SDK import, connections
        ember_vmap_run(100, "warm")
        rounds = {"bare": iter(range(args.repeat)), "vmap": iter(range(args.repeat))}
        work = {
            "bare": lambda: asyncio.run(
                bare_calls(args.items, args.concurrency, base_url, f"bare {next(rounds['bare'])}")
            ),
            "vmap": lambda: ember_vmap_run(args.items, f"vmap {next(rounds['vmap'])}"),
        }
        print(f"{args.items} prompts through vmap(LMModule), latency {args.latency * 1000:.0f} ms, "
              f"concurrency {args.concurrency}, {os.cpu_count()} CPUs, "
              f"best of {args.repeat}")  # fmt: skip
        print(
            f"latency-bound limit: ceil({args.items}/{args.concurrency}) x {args.latency * 1000:.0f} ms = {limit:.2f} s"
        )
        compare(work, repeat=args.repeat, n_calls=args.items, limit=limit)


def main() -> None:
    args = arguments()
    if args.part in ("array", "both"):
        array_part(args)
    if args.part in ("host", "both"):
        host_part(args)


if __name__ == "__main__":
    main()
