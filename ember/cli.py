"""The ``ember`` command: ``ember eval``, ``ember models``, ``ember datasets``.

``ember eval`` is the main job: evaluate one or more systems on a dataset and write a
comparison report. A system is a model id (``openai:gpt-4o``) or compact NON notation
(``"5:E:local:smollm2-135m-instruct:0.7,1:MC"``), optionally labelled ``name=spec``.
Every finished item is journaled under ``ember_runs/``, at a path derived from the run's
settings and the dataset's content: if a run is interrupted, running the same command again
resumes it, calling no finished item twice; a changed dataset gets a journal of its own.
Arguments are checked before any model call (a usage error exits 2, any other error exits 1
with one line ``ember eval: ...``), and one journal serves one run at a time. Model-id systems
are always sent a temperature (0 unless ``--temperature``), recorded in the journal and the report;
each system with failed items gets its failure count and first (redacted) error printed.
``ember models`` also lists configured endpoints and what their ``/v1/models`` serves.
Heavy modules load inside the commands, so ``ember --help`` is fast.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

_ITEM_FIELDS = ("id", "query", "answer", "choices")


class _UsageError(Exception):
    """A bad argument that only shows once several are read together: exits 2, as argparse does."""


def _number(kind: Callable[[str], Any], *, low: float, what: str, high: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` that accepts a finite number in ``[low, high]``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            bound = f">= {low:g}" if high is None else f"from {low:g} to {high:g}"
            raise argparse.ArgumentTypeError(f"{what} must be {bound}, got {text}")
        return value

    return parse


def _field(text: str) -> tuple[str, str]:
    """``ITEM=COLUMN`` for ``--field``."""
    item, sep, column = text.partition("=")
    item, column = item.strip(), column.strip()
    if not sep or not column:
        raise argparse.ArgumentTypeError(f"expected ITEM=COLUMN (e.g. query=question), got {text!r}")
    if item not in _ITEM_FIELDS:
        raise argparse.ArgumentTypeError(f"unknown item field {item!r} in {text!r}; map any of {', '.join(_ITEM_FIELDS)}")
    return item, column


def _template(text: str) -> str:
    """A ``--prompt`` template: plain ``{name}`` placeholders only, braces balanced."""
    from ember.eval import PromptTemplateError, template_fields

    try:
        template_fields(text)
    except PromptTemplateError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember", description="Ember: compound AI systems, evaluated.")
    commands = parser.add_subparsers(dest="command", required=True)

    ev = commands.add_parser("eval", help="evaluate systems on a dataset and write a report")
    ev.add_argument("--dataset", required=True, help="a registered dataset (see `ember datasets`) or a .jsonl/.csv/.parquet file")
    ev.add_argument("--system", action="append", required=True, metavar="[NAME=]SPEC",
                    help="model id or compact NON notation; repeat to compare systems on the same items")  # fmt: skip
    ev.add_argument("--subset", help="dataset subset (e.g. an MMLU subject)")
    ev.add_argument("--split", help="dataset split (default: the dataset's first)")
    ev.add_argument("--sample", type=_number(int, low=1, what="N"), metavar="N", help="evaluate N items drawn at random (seeded)")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ev.add_argument("--data-dir", type=Path, help="directory holding the benchmark's files (default: <data.data_dir>/<dataset>)")
    ev.add_argument("--field", action="append", default=[], metavar="ITEM=COLUMN", type=_field,
                    help="for a file dataset: map an item field (id, query, answer, choices) to a column")  # fmt: skip
    ev.add_argument("--evaluator", default="auto",
                    help="auto (by task), exact, contains, mc, numeric, f1, or judge:MODEL_ID")  # fmt: skip
    ev.add_argument("--prompt", type=_template,
                    help="prompt template: {prompt} (query and choices), {query}, {choices}, metadata keys")  # fmt: skip
    ev.add_argument("--max-tokens", type=_number(int, low=1, what="--max-tokens"), help="max tokens per call, for model-id systems")
    ev.add_argument("--temperature", type=_number(float, low=0, high=2, what="--temperature"),
                    help="temperature sent to model-id systems (default 0: a server's own default, often 0.8, "
                         "would make identical runs differ); recorded in the journal and the report")  # fmt: skip
    ev.add_argument("--concurrency", type=_number(int, low=1, what="--concurrency"), default=64,
                    help="items in flight (model calls are bounded by the models layer)")  # fmt: skip
    ev.add_argument("--budget", type=_number(float, low=0, what="--budget"), metavar="USD",
                    help="stop starting items once this much is spent")  # fmt: skip
    ev.add_argument("--journal", type=Path, help="results journal (default: ember_runs/<derived from the settings>.sqlite)")
    ev.add_argument("--fresh", action="store_true", help="discard an existing journal for these settings and start over")
    ev.add_argument("--report", type=Path, help="report path without extension (default: reports/<journal name>)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument("--devices", type=_number(int, low=1, what="--devices"), default=1, metavar="N",
                    help="split local-model batches over the first N devices (default 1)")  # fmt: skip
    ev.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                    help="spread items over a Ray cluster at ADDRESS (no value: $RAY_ADDRESS, else a local instance); "
                         "the journal stays here; needs ember-ai[ray]")  # fmt: skip
    ev.set_defaults(run=_eval, parser=ev)

    models = commands.add_parser("models", help="list the models in the registry, and the configured endpoints")
    models.add_argument("--timeout", type=_number(float, low=0.1, what="--timeout"), default=2.0, metavar="S",
                        help="seconds to wait for each endpoint's /v1/models (default 2)")  # fmt: skip
    models.set_defaults(run=_models, parser=models)
    datasets = commands.add_parser("datasets", help="list the registered datasets, or describe one")
    datasets.add_argument("name", nargs="?", help="show where this dataset's files come from")
    datasets.set_defaults(run=_datasets, parser=datasets)
    return parser


def _systems(specs: Sequence[str]) -> dict[str, str]:
    """``[NAME=]SPEC`` arguments as ``{label: spec}``: labels stripped, never empty, never given twice."""
    systems: dict[str, str] = {}
    for text in specs:
        label, sep, spec = text.partition("=")
        if not sep:
            label = spec = text
        label, spec = label.strip(), spec.strip()
        if not label or not spec:
            raise _UsageError(f"--system {text!r}: expected SPEC or NAME=SPEC with a non-empty name and spec")
        if label in systems:
            raise _UsageError(f"system name {label!r} given twice; label each system NAME=SPEC")
        systems[label] = spec
    return systems


def _load(args: argparse.Namespace) -> tuple[Any, str, str | None]:
    """The dataset, its task kind, and its default instruction."""
    from ember.data import DataLoader, DataService, RandomSampler

    sampler = RandomSampler(args.sample, seed=args.seed) if args.sample else None
    path = Path(args.dataset).expanduser()
    if path.suffix.lower() in (".jsonl", ".ndjson", ".csv", ".json", ".parquet"):
        fields = dict(args.field)
        fields = {k: ([c.strip() for c in v.split(",")] if k == "choices" and "," in v else v) for k, v in fields.items()}
        data = DataLoader(path, fields=fields, sampler=sampler)
        first = next(iter(data), None)
        return data, "multiple_choice" if first is not None and first.choices else "exact", None
    service = DataService()
    spec = service.info(args.dataset)
    data = service.load_dataset(spec.name, subset=args.subset, split=args.split, sampler=sampler, source_dir=args.data_dir)
    return data, spec.task, spec.instruction


def _evaluators(choice: str, task: str) -> list[Any]:
    from ember import eval as E

    if choice.startswith("judge:"):
        return [E.LLMJudgeEvaluator(choice.removeprefix("judge:"))]
    if choice == "auto":
        choice = {"multiple_choice": "mc", "numeric": "numeric", "short_answer": "routed"}.get(task, "exact")
    table = {
        "exact": E.ExactMatchEvaluator,
        "contains": lambda: E.ExactMatchEvaluator(contains=True),
        "mc": E.MultipleChoiceEvaluator,
        "numeric": E.NumericEvaluator,
        "f1": E.TokenF1Evaluator,
        "routed": lambda: E.RoutedEvaluator({"number": E.NumericEvaluator(), "text": E.ExactMatchEvaluator(contains=True)}),
    }
    if choice not in table:
        raise SystemExit(f"ember eval: unknown --evaluator {choice!r}; use auto, {', '.join(sorted(table))} or judge:MODEL_ID")
    return [table[choice]()]


def _writable(path: Path, what: str) -> None:
    """Fail now, not after the run, if ``path`` cannot be written: create its folder, try the file."""
    from ember.models import EmberError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise EmberError(f"{what} {path} is a directory; give a file path")
        existed = path.exists()
        with open(path, "a"):
            pass
        if not existed:
            path.unlink()
    except OSError as error:
        raise EmberError(f"cannot write {what} {path}: {error.strerror or error}") from None


def _mesh(devices: int) -> Any:
    """``--devices N``: a 1-D mesh of the default backend's first N devices; none for 1 (no jax import)."""
    if devices == 1:
        return None
    from ember.local import batch_mesh

    try:
        return batch_mesh(devices)
    except ValueError as error:
        raise _UsageError(f"--devices {devices}: {error}") from None


def _eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from ember.eval import Journal, as_system, comparison_table, render_prompt, write_report
    from ember.eval._runner import Run, RunOptions, dataset_fingerprint, run_sync
    from ember.models import EmberError

    console = Console()
    systems = _systems(args.system)
    mesh = _mesh(args.devices)
    if args.ray is not None and mesh is not None:
        raise _UsageError("--devices applies to local runs; it cannot be combined with --ray")
    backend = {"backend": "ray", "ray_address": args.ray or None} if args.ray is not None else {}
    data, task, instruction = _load(args)
    evaluators = _evaluators(args.evaluator, task)
    if instruction:  # the dataset's instruction is text, not a template: its braces are literal
        instruction = instruction.replace("{", "{{").replace("}", "}}")
    prompt = args.prompt or (f"{instruction}\n\n{{prompt}}" if instruction else None)
    # Temperature is always sent (0 unless given): left to the server, its default (llama.cpp: 0.8) would apply
    # and identical runs would differ. It is part of each model-id system's spec, so of the journal's identity.
    temperature = 0.0 if args.temperature is None else args.temperature
    params = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", temperature)) if v is not None}
    label = data.name or args.dataset
    count, sha = dataset_fingerprint(data, name=label)  # one pass: content identity, ids unique, not empty
    if count == 0:
        raise EmberError(f"dataset {label} has no items to evaluate (check the file, --subset, --split and --sample)")
    if prompt is not None:
        render_prompt(next(iter(data)), prompt)  # a placeholder the items lack fails now, not once per item
    wrapped = {name: as_system(spec, name=name, **params) for name, spec in systems.items()}
    # The default journal is named after everything the journal's identity holds, the content included:
    # a changed dataset or setting gets a journal of its own, the same command resumes its own.
    settings = json.dumps([sha, {name: s.spec for name, s in wrapped.items()}, [repr(e) for e in evaluators], prompt],
                          sort_keys=True)  # fmt: skip
    name = f"{Path(args.dataset).stem}-{hashlib.sha256(settings.encode()).hexdigest()[:10]}"
    journal_path = (args.journal or Path("ember_runs") / f"{name}.sqlite").expanduser()
    report = (args.report or Path("reports") / name).expanduser()
    for path, what in ((report.with_suffix(".json"), "report"), (report.with_suffix(".html"), "report")):
        _writable(path, what)
    given = args.max_tokens is not None or args.temperature is not None
    if given and any(getattr(s, "model_id", None) is None for s in wrapped.values()):
        console.print("note: --max-tokens/--temperature apply to model-id systems; NON notation carries its own temperatures")
    journal = Journal(journal_path, fresh=args.fresh)
    try:
        options = RunOptions(prompt=prompt, concurrency=args.concurrency, journal=journal, budget=args.budget,
                             progress=False if args.no_progress else None, mesh=mesh, **backend)  # fmt: skip
        run = Run(data, wrapped, evaluators, options, fingerprint=(count, sha))
        finished = run.open()  # the journal is ours, and holds this run (or none yet)
        if finished:
            console.print(f"[bold]resuming[/bold] from {journal_path}: {finished} finished item(s) will not be called again")
        results = run_sync(run)
        console.print(comparison_table(results, title=f"{label}: {count} items"))
        for system, r in results.items():
            if r.stopped:
                console.print(f"[bold red]{system}: stopped early[/bold red] — {r.stopped}; raise --budget and rerun to continue")
            if r.n_errors:
                console.print(f"[yellow]{system}: {r.n_errors} item(s) failed of {r.n_items}; first error: "
                              f"{_first_error(r)}[/yellow]", markup=True, highlight=False)  # fmt: skip
                console.print(f"[yellow]{system}: the failed items' cost is unknown; rerun the same command to retry them "
                              f"(every error is in {escape(str(journal_path))})[/yellow]")  # fmt: skip
        settings = {"temperature": temperature, "max_tokens": args.max_tokens,
                    "systems": {name: s.spec for name, s in wrapped.items()}}  # fmt: skip
        try:
            json_path, html_path = write_report(results, report, dataset=label, settings=settings)
        except OSError as error:
            raise EmberError(f"cannot write report {report}: {error.strerror or error}") from None
    except KeyboardInterrupt:
        console.print(f"\n[bold red]interrupted[/bold red]: finished items are saved in {journal_path}; run the same command to resume")
        return 130
    finally:
        journal.close()
    console.print(f"journal {journal_path}\nreport  {json_path}\n        {html_path}")
    return 0


def _first_error(results: Any) -> str:
    """The first failed item's error, redacted, on one bounded line (markup escaped)."""
    from rich.markup import escape

    from ember._runtime import redact

    record = next((r for r in results.records if not r.ok), None)
    if record is None:
        return "(not recorded)"
    text = " ".join(redact(record.error or "").split())
    text = text if len(text) <= 300 else text[:299] + "…"
    return f"item {escape(record.item_id)}: {escape(text)}"


def _models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ember.models import ModelRegistry

    registry = ModelRegistry()
    table = Table(title="models")
    for column in ("id", "provider", "input $/M", "output $/M", "context"):
        table.add_column(column)
    for model_id in registry.list_models():
        info = registry.get_model_info(model_id)
        price = lambda v: "unknown" if v is None else f"{v:g}"  # noqa: E731
        table.add_row(model_id, info.provider.name, price(info.cost.input_cost_per_million),
                      price(info.cost.output_cost_per_million), str(info.context_window or "-"))  # fmt: skip
    console = Console()
    console.print(table)
    endpoints = _endpoints(args.timeout)
    if endpoints:
        listing = Table(title="configured endpoints (model ids: PROVIDER:MODEL)")
        for column in ("provider", "kind", "base URL", "key", "served models"):
            listing.add_column(column, overflow="fold")
        for row in endpoints:
            listing.add_row(*row)
        console.print(listing)
    return 0


def _model_list_request(kind: str, base_url: str, key: str | None) -> tuple[str, dict[str, str]] | None:
    """Where a provider of ``kind`` lists its models, and the headers that ask (None: it has no list).

    OpenAI-style servers answer ``GET {base_url}/models`` (their base URL ends in ``/v1``) with
    a bearer key; Anthropic's API answers ``GET {base_url}/v1/models`` (its base URL is the
    host, as for ``/v1/messages``) with ``x-api-key`` and ``anthropic-version``, one page of
    up to 1000 models.
    """
    root = base_url.rstrip("/")
    if kind in ("openai", "openai_compatible"):
        return root + "/models", {"Authorization": f"Bearer {key}"} if key else {}
    if kind == "anthropic":
        from ember.models.providers.anthropic import ANTHROPIC_VERSION

        return root + "/v1/models?limit=1000", {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": key} if key else {})}
    return None


def _endpoints(timeout: float) -> list[tuple[str, str, str, str, str]]:
    """Each provider configured with a base URL (or of kind ``openai_compatible``): where it is,
    whether a key is set (never the key), and the models it lists (OpenAI-style and Anthropic
    servers, see :func:`_model_list_request`), asked in parallel with ``timeout`` seconds each.
    A server that does not answer is "unreachable"."""
    import concurrent.futures
    import os
    from urllib.parse import urlsplit

    from ember._context import get_app_context
    from ember._runtime import redact

    section = get_app_context().config_manager.get_config("model_registry")
    found = []
    for name, config in section.providers.items():
        kind = config.kind or name
        if not config.base_url and kind != "openai_compatible":
            continue
        key = config.api_key.get_secret_value() if config.api_key else None
        if key is None and config.api_key_env:
            key = os.environ.get(config.api_key_env, "").strip() or None
        if key is not None:
            key_state = "set"
        elif config.requires_key or (config.requires_key is None and kind not in ("openai_compatible",)):
            key_state = f"missing ({config.api_key_env or name.upper() + '_API_KEY'})"
        else:
            key_state = "none (keyless)"
        parts = urlsplit(config.base_url or "")  # shown without user info, query or fragment: they may hold credentials
        shown = redact(f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}") if parts.scheme else "(none)"
        found.append((name, kind, shown, key_state, config.base_url, key))

    def served(base_url: str | None, kind: str, name: str, key: str | None) -> str:
        if not base_url:
            return "no base_url configured"
        asked = _model_list_request(kind, base_url, key)
        if asked is None:
            return "(not asked: lists OpenAI-style and Anthropic servers only)"
        import httpx

        url, headers = asked
        try:
            response = httpx.get(url, headers=headers, timeout=timeout)
        except Exception as error:  # refused, timed out, bad URL: a row, never a traceback
            return f"unreachable ({type(error).__name__})"
        if response.status_code != 200:
            return f"unreachable (HTTP {response.status_code} from {urlsplit(url).path})"
        try:
            ids = [str(m["id"]) for m in response.json().get("data", [])]
        except Exception:
            return "answered, but not with a model list"
        return ", ".join(f"{name}:{i}" for i in ids) or "(none listed)"

    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(found)))) as pool:
        answers = list(pool.map(lambda f: served(f[4], f[1], f[0], f[5]), found))
    return [(name, kind, shown, state, redact(answer)) for (name, kind, shown, state, _, _), answer in zip(found, answers)]


def _datasets(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ember.data import DataService

    service, console = DataService(), Console()
    if args.name:
        spec = service.info(args.name)
        console.print(f"[bold]{spec.name}[/bold] ({spec.task}): {spec.description}")
        console.print(f"subsets: {', '.join(spec.subsets) or '(found in the files)'}; splits: {', '.join(spec.splits)}")
        console.print(f"files: {spec.source}")
        if not spec.bundled:
            console.print(f"looked for under {service.data_dir / spec.name} unless --data-dir is given")
        return 0
    table = Table(title="datasets (`ember datasets NAME` says where to get the files)")
    for column in ("name", "task", "subsets", "splits", "description"):
        table.add_column(column, overflow="fold")
    for spec in service.list_datasets():
        subsets = ", ".join(spec.subsets) if spec.subsets else "(from files)"
        table.add_row(spec.name, spec.task, subsets, ", ".join(spec.splits), spec.description)
    console.print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ember`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from ember.models import EmberError

    try:
        return args.run(args)
    except _UsageError as error:
        args.parser.error(str(error))  # exits 2 with the command's usage line
    except EmberError as error:
        print(f"ember {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
