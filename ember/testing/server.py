"""Run the loopback server from a shell: ``python -m ember.testing.server``.

For pointing an application, a notebook or another language's SDK at a fake provider::

    python -m ember.testing.server --port 8000 --latency 0.05 \\
        --fault rate_limit:rate=0.1,retry_after=2 --fault drop:on=3+7

A fault is ``KIND[:key=value,...]`` with the keyword arguments of the matching
:class:`~ember.testing.Fault` constructor; ``on`` lists indexes joined by ``+``.
"""

from __future__ import annotations

import argparse
import importlib
import threading
from collections.abc import Sequence

from ember.testing._answer import Responder
from ember.testing._faults import Fault
from ember.testing._server import LoopbackServer

_CONSTRUCTORS = {
    "rate_limit": Fault.rate_limit,
    "server_error": Fault.server_error,
    "slow": Fault.slow,
    "malformed": Fault.malformed,
    "drop": Fault.drop,
    "context_length": Fault.context_length,
    "client_error": Fault.client_error,
}
_CONVERT = {
    "rate": float,
    "retry_after": float,
    "delay": float,
    "status": int,
    "message": str,
    "provider": str,
    "path": str,
    "on": lambda value: [int(i) for i in value.split("+")],
}


def parse_fault(spec: str) -> Fault:
    """``"server_error:status=503,rate=0.05"`` -> ``Fault.server_error(status=503, rate=0.05)``."""
    kind, _, arguments = spec.partition(":")
    if kind not in _CONSTRUCTORS:
        raise argparse.ArgumentTypeError(f"unknown fault kind {kind!r}; choose from {', '.join(_CONSTRUCTORS)}")
    kwargs = {}
    for pair in filter(None, arguments.split(",")):
        key, _, value = pair.partition("=")
        if key not in _CONVERT:
            raise argparse.ArgumentTypeError(f"unknown fault argument {key!r} in {spec!r}")
        try:
            kwargs[key] = _CONVERT[key](value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad value for {key!r} in {spec!r}") from None
    try:
        return _CONSTRUCTORS[kind](**kwargs)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{spec!r}: {error}") from None


def _load_responder(target: str) -> Responder:
    module, _, name = target.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"responder must be 'module:function', got {target!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise argparse.ArgumentTypeError(f"cannot load responder {target!r}: {error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted (Ctrl-C)."""
    parser = argparse.ArgumentParser(prog="python -m ember.testing.server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every response")
    parser.add_argument("--seed", type=int, default=0, help="seed of rate-based faults")
    parser.add_argument("--fault", type=parse_fault, action="append", default=[], metavar="KIND[:k=v,...]")
    parser.add_argument(
        "--model", action="append", dest="models", metavar="ID", help="a model id for GET /v1/models (repeatable)"
    )
    parser.add_argument(
        "--responder",
        type=_load_responder,
        metavar="MODULE:FUNCTION",
        help="answer function taking an ember.testing.LoopbackRequest",
    )
    parser.add_argument("--profile", choices=("llama_cpp",), help="imitate a real server (see LoopbackServer)")
    args = parser.parse_args(argv)
    server = LoopbackServer(
        latency=args.latency,
        responder=args.responder,
        faults=args.fault,
        seed=args.seed,
        models=args.models or ("loopback",),
        host=args.host,
        port=args.port,
        profile=args.profile,
    )
    with server:
        print(f"Ember loopback server on {server.url}", flush=True)
        print(f"  OpenAI:    base_url={server.openai_base_url}", flush=True)
        print(f"  Anthropic: base_url={server.anthropic_base_url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print(f"stopped after {server.stats.total} requests", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
