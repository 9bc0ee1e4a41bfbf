"""Offline against on-policy preference tuning, read from finished runs: one table, paired tests between runs.

Each run's own report compares its fine-tune with the base model on its validation split. The finding of issue 16
is a comparison *between* runs (offline DPO, online DPO and GRPO from the same base, on the same prompts and
budget; or SFT against SFT + GRPO), which no single report holds. This script reads the runs' `eval/report.json`
files (nothing is recomputed), checks that every run was evaluated on the same validation file, and prints:

- per run and system: the headline metric (pair accuracy, macro-F1 or number match) and the mean reward of the
  held-out answers, each with its 95% bootstrap interval, every other numeric metric (strict and lenient number
  match on GSM8K-style data), and the run's training and whole-run wall time from the registry;
- paired bootstrap tests (the same resampled examples for both sides, 1,000 resamples, as the reports' own
  test) between the fine-tuned systems of every two runs, and between each and the first run's base system: the
  difference, its 95% interval and the one-sided p-value that the first is not better.

Usage, after the runs of `benchmarks/preference_configs/` (see the command at the top of each config):

    python benchmarks/onpolicy_finding.py RUN RUN ... [--registry URL]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from typing import Any

import numpy as np

from specialize.errors import RunNotFoundError, SpecializeError
from specialize.evaluate.metrics import per_example_scores
from specialize.evaluate.significance import RESAMPLES, interval, resampled_scores
from specialize.runs import open_run

SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run ids (or run directories), evaluated on the same file")
    parser.add_argument("--registry", help="the registry holding the runs (default: each run's own)")
    parser.add_argument(
        "--report",
        metavar="NAME",
        help="read each run's eval/NAME/report.json (written by `specialize eval RUN --data NAME.jsonl`) instead "
        "of the report of the run itself",
    )
    args = parser.parse_args()
    try:
        runs = [_load(ref, args.registry, args.report) for ref in args.runs]
    except SpecializeError as exc:  # an unknown or unfinished run: one line, as the CLI gives it
        parser.error(str(exc))
    hashes = {r["validation_sha256"] for r in runs}
    if len(hashes) > 1:
        parser.error("the runs were evaluated on different validation files; compare runs of one data set")
    _print_table(runs)
    _print_tests(runs)


def _load(ref: str, registry_url: str | None, name: str | None = None) -> dict[str, Any]:
    """A run's report (its own, or the one `specialize eval` wrote for the file `name`), method, and wall times."""
    run_dir, config, registry = open_run(ref, registry_url)
    path = (run_dir.eval / name if name else run_dir.eval) / "report.json"
    if not path.exists():
        fix = f"run specialize eval {run_dir.id} --data {name}.jsonl" if name else "finish it first"
        raise RunNotFoundError(f"run {run_dir.id} has no {path}; {fix}")
    report = json.loads(path.read_text(encoding="utf-8"))
    row = registry.get_run(run_dir.id)
    train = {m["name"]: m["value"] for m in registry.get_metrics(run_dir.id, "train") if m["step"] is None}
    wall = (row["finished_at"] - row["created_at"]).total_seconds() if row["finished_at"] else None
    return {
        "id": run_dir.id,
        "method": config.train.method,
        "report": report,
        "train_seconds": train.get("train_seconds"),
        "wall_seconds": wall,
        "validation_sha256": hashlib.sha256((run_dir.data / "validation.jsonl").read_bytes()).hexdigest(),
    }


def _per_example(report: dict[str, Any], system: str) -> tuple[list[Any], list[str] | None]:
    """What the paired test resamples for the headline: predictions with labels (macro-F1), else 1/0 scores."""
    metrics, task, headline = report["systems"][system], report["task"], report["headline"]
    if task == "classification":
        return metrics["predictions"], report["labels"]
    return per_example_scores(task, headline, report["gold"] or _gold(report), metrics["predictions"]), None


def _gold(report: dict[str, Any]) -> list[str]:
    # A preference report keeps no gold list: every pair's right answer is its chosen one.
    return ["chosen"] * report["n_examples"]


def _print_table(runs: list[dict[str, Any]]) -> None:
    first = runs[0]["report"]
    print(f"{first['task']}, {first['n_examples']} validation examples; headline: {first['headline']}")
    print(f"{'run / system':66}{'headline [95% CI]':>26}{'reward [95% CI]':>26}{'train s':>9}{'run s':>8}")
    for run in runs:
        report = run["report"]
        for system, metrics in report["systems"].items():
            low, high = report["significance"]["intervals"][system]
            value = f"{metrics[report['headline']]:.3f} [{low:.3f}, {high:.3f}]"
            reward = ""
            if "reward" in metrics:
                r_low, r_high = metrics["reward_interval"]
                reward = f"{metrics['reward']:.3f} [{r_low:.3f}, {r_high:.3f}]"
            fine_tuned = system.startswith("fine_tuned")
            seconds = (
                f"{run['train_seconds'] or 0:>9.0f}{run['wall_seconds'] or 0:>8.0f}" if fine_tuned else ""
            )
            print(f"{run['method'] + ' ' + run['id'] + ' / ' + system:66}{value:>26}{reward:>26}{seconds}")
            others = {
                m: v
                for m, v in metrics.items()
                if isinstance(v, float) and m not in (report["headline"], "reward")
            }
            if others:
                print(f"{'':8}" + ", ".join(f"{m} {v:.3f}" for m, v in others.items()))


def _print_tests(runs: list[dict[str, Any]]) -> None:
    base = runs[0]["report"]
    sides = [(f"{r['method']} {r['id']}", r["report"], "fine_tuned") for r in runs]
    sides.append(("base (" + runs[0]["id"] + ")", base, "base_zero_shot"))
    print(f"\npaired bootstrap ({RESAMPLES} resamples): difference [95% CI], p (first not better)")
    for (name_a, rep_a, sys_a), (name_b, rep_b, sys_b) in itertools.combinations(sides, 2):
        if sys_a not in rep_a["systems"] or sys_b not in rep_b["systems"]:
            continue
        print(f"{name_a} vs {name_b}")
        (a, labels), (b, _) = _per_example(rep_a, sys_a), _per_example(rep_b, sys_b)
        gold = rep_a["gold"]
        print("  " + _test(rep_a["headline"], _diff(gold, a, b, labels)))
        if "rewards" in rep_a["systems"][sys_a] and "rewards" in rep_b["systems"][sys_b]:
            rewards = (rep_a["systems"][sys_a]["rewards"], rep_b["systems"][sys_b]["rewards"])
            print("  " + _test("reward", _diff(None, *rewards, None)))


def _diff(gold: list[str] | None, a: list[Any], b: list[Any], labels: list[str] | None) -> tuple[float, Any]:
    observed = resampled_scores(gold, a, labels, None)[0] - resampled_scores(gold, b, labels, None)[0]
    return float(observed), resampled_scores(gold, a, labels, SEED) - resampled_scores(gold, b, labels, SEED)


def _test(metric: str, result: tuple[float, np.ndarray]) -> str:
    observed, diff = result
    low, high = interval(diff)
    p = max(float((diff <= 0).mean()), 1 / RESAMPLES)
    return f"{metric:22} {observed:+.3f} [{low:+.3f}, {high:+.3f}]  p={p:.3f}"


if __name__ == "__main__":
    main()
