"""Offline demo: three compound systems on the bundled ``minibench``, with the embedded model.

Compares, on the same items:

- ``single``         one call to SmolLM2-135M-Instruct at temperature 0;
- ``ensemble+vote``  five samples at temperature 0.7, then MostCommon (majority vote);
- ``ensemble+judge`` the same five samples, then JudgeSynthesis (the model judges them).

No network, no API keys: the model runs in-process (JAX, CPU) and its concurrent requests
are micro-batched. Prints the comparison table and writes ``reports/eval_demo.{json,html}``.
Every finished item is journaled under ``ember_runs/``: interrupt it and run it again to
resume where it stopped.

    python examples/eval_demo.py [--items 40] [--max-tokens 10] [--judge-tokens 48]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

MODEL = "local:smollm2-135m-instruct"


def main() -> None:
    parser = argparse.ArgumentParser(description="Compare three compound systems on minibench, offline.")
    parser.add_argument("--items", type=int, default=40, help="items drawn from minibench (default 40)")
    parser.add_argument("--max-tokens", type=int, default=10, help="answer length cap for generators (default 10)")
    parser.add_argument("--judge-tokens", type=int, default=48, help="answer length cap for the judge (default 48)")
    args = parser.parse_args()

    from rich.console import Console

    from ember.config import get_config_manager
    from ember.data import INSTRUCTIONS, DataService, RandomSampler
    from ember.eval import (
        ExactMatchEvaluator,
        Journal,
        JournalMismatchError,
        ModelSystem,
        NumericEvaluator,
        OperatorSystem,
        RoutedEvaluator,
        compare_systems,
        comparison_table,
        write_report,
    )
    from ember.non import UniformEnsemble
    from ember.operators import JudgeSynthesis, MostCommon, Sequential

    console = Console()
    # The local model generates one micro-batch at a time: admit one batch's worth of calls, and
    # give each call time to wait for the batch ahead of it (CPU generation takes tens of seconds).
    get_config_manager().update_config(
        "model_registry", {"providers": {"local": {"max_concurrency": 32, "timeout": 900}}}
    )
    data = DataService().load_dataset("minibench", sampler=RandomSampler(args.items, seed=0))
    def ensemble() -> UniformEnsemble:
        return UniformEnsemble(num_units=5, model_name=MODEL, temperature=0.7, max_tokens=args.max_tokens)

    judge = JudgeSynthesis(model_name=MODEL, temperature=0.0, max_tokens=args.judge_tokens)
    systems = {
        "single": ModelSystem(MODEL, temperature=0.0, max_tokens=args.max_tokens),
        "ensemble+vote": OperatorSystem(Sequential([ensemble(), MostCommon()]), name="ensemble+vote"),
        "ensemble+judge": OperatorSystem(Sequential([ensemble(), judge]), name="ensemble+judge"),
    }
    # Arithmetic answers are checked as numbers; facts pass when the answer appears in the reply.
    evaluator = RoutedEvaluator({"number": NumericEvaluator(), "text": ExactMatchEvaluator(contains=True)})
    journal = Path("ember_runs") / f"eval_demo-{args.items}-{args.max_tokens}-{args.judge_tokens}.sqlite"
    if journal.exists():
        console.print(f"resuming from {journal}: finished items are not run again")
    console.print(f"{len(data)} minibench items x 3 systems, model {MODEL}")
    console.print("(the first run compiles the model's programs; later runs load them from a cache)")
    started = time.perf_counter()

    def run(journal: Path | Journal) -> dict:
        prompt = f"{INSTRUCTIONS['short_answer']}\n\n{{query}}"
        return compare_systems(data, systems, [evaluator], prompt=prompt, concurrency=16, journal=journal)

    try:
        results = run(journal)
    except JournalMismatchError as mismatch:  # written by another version of this demo: start over
        console.print(f"[yellow]not resuming:[/yellow] {mismatch}\nstarting {journal} afresh")
        results = run(Journal(journal, fresh=True))
    table = comparison_table(results, title=f"minibench, {len(data)} items ({time.perf_counter() - started:.0f} s)")
    console.print(fit_80_columns(table))
    console.print(
        "How to read it: accuracy, with its 95% bootstrap interval in brackets.\n"
        f"Where two systems' intervals overlap, {len(data)} items cannot tell them apart;\n"
        "more items (--items) narrow the intervals."
    )
    for name, r in results.items():
        if r.n_errors:
            first = next(rec for rec in r.records if not rec.ok)
            console.print(f"[yellow]{name}: {r.n_errors} item(s) failed, e.g. {first.error[:160]}[/yellow]")
    json_path, html_path = write_report(results, Path("reports") / "eval_demo", dataset=data.name, title="Ember demo: minibench")
    console.print(f"report: {json_path}  {html_path}")
    from ember.local import compile_counts  # counted since the model loaded (0: nothing ran)

    counts = compile_counts()
    console.print(
        f"{len(data)} items x 3 systems in {time.perf_counter() - started:.1f} s "
        f"({counts['compiles']} XLA compiles in {counts['compile_seconds']:.1f} s, {counts['cache_hits']} from the cache)"
    )


def fit_80_columns(table):
    """The comparison table narrowed to fit an 80-column terminal (about 75 columns): short
    headers, no cell borders, and the system name and interval kept on one line each."""
    from rich import box

    short = {"accuracy [95% CI]": "acc [95% CI]", "errors": "err", "retries": "retry"}
    for column in table.columns:
        column.header = short.get(str(column.header), column.header)
        if column.header in ("system", "acc [95% CI]"):
            column.no_wrap = True
    table.box = box.SIMPLE_HEAD
    table.show_edge = False
    table.pad_edge = False
    table.collapse_padding = True
    return table


if __name__ == "__main__":
    main()
