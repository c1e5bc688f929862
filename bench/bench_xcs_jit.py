"""jit against eager: an operator whose ``forward`` calls four independent sub-operators in turn.

Each sub-operator makes one model call; the in-process loopback server answers after
``--latency`` seconds (300 ms by default). Eager runs the four calls one after another
(about 4 x latency); under ``jit`` they are dispatched at once and overlap (about 1 x
latency), so the ideal ratio is 4x. Each side runs ``--rounds`` times, alternating; the
best round of each is compared. Results are checked to be identical.

    python bench/bench_xcs_jit.py [--latency 0.3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import time

from ember.operators import LMModule, Operator
from ember.testing import LoopbackServer
from ember.xcs import jit, jit_stats

MODEL = "openai:gpt-4o-mini"


class Ask(Operator):
    prefix: str

    def forward(self, *, inputs):
        return {"answer": LMModule(MODEL)(f"{self.prefix}: {inputs.query}")}


class FourIndependent(Operator):
    a: Operator
    b: Operator
    c: Operator
    d: Operator

    def forward(self, *, inputs):
        first = self.a(inputs=inputs)
        second = self.b(inputs=inputs)
        third = self.c(inputs=inputs)
        fourth = self.d(inputs=inputs)
        return {"answers": [first["answer"], second["answer"], third["answer"], fourth["answer"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with LoopbackServer(latency=args.latency) as server:
        os.environ.update(server.environ())
        eager_op = FourIndependent(*(Ask(prefix=p) for p in "abcd"))
        jit_op = jit(eager_op)
        eager_op(inputs={"query": "warm-up"})  # connections, config, first-call imports
        eager_times, jit_times = [], []
        for r in range(args.rounds):
            query = {"query": f"round {r}"}
            begun = time.perf_counter()
            expected = eager_op(inputs=query)
            eager_times.append(time.perf_counter() - begun)
            server.reset()
            begun = time.perf_counter()
            got = jit_op(inputs=query)
            jit_times.append(time.perf_counter() - begun)
            assert got == expected, "jit changed the result"
            in_flight = server.stats.max_in_flight
        eager_best, jit_best = min(eager_times), min(jit_times)
        print(f"latency {args.latency * 1000:.0f} ms, 4 independent sub-operator calls, best of {args.rounds}")
        print(f"  eager : {eager_best * 1000:7.1f} ms")
        print(f"  jit   : {jit_best * 1000:7.1f} ms   (max in flight: {in_flight})")
        print(f"  ratio : {eager_best / jit_best:.2f}x  (ideal 4x)")
        print(f"  stats : {jit_stats(jit_op).summary()}")


if __name__ == "__main__":
    main()
