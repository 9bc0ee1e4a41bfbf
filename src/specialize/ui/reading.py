"""What the dashboard shows of a run, read defensively from its registry row and its directory.

Reads the registry row (`runs` table, training metrics), `config.resolved.yaml`, `data/audit.json`,
`data/rejects.jsonl`, `data/validation.jsonl`, `train/result.json` and `eval/report.json`. Nothing is written.

The files are read as they are, not through a schema: runs written by older or newer versions of specialize sit
in the same registry, and `report.json` gains keys as evaluation grows. Every reader here takes what is there,
shows unknown keys as they are, and turns a missing or malformed part into "not there" instead of an error, so a
page never fails on one odd run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from specialize.runs import Registry

FINE_TUNED = "fine_tuned"
# Metrics shown first, in this order, when a report has them; any other number a report carries follows.
KNOWN_METRICS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "micro_f1",
    "exact_match",
    "numeric_match",
    "rouge_l",
    "bleu",
    "preference_accuracy",
    "perplexity",
    "loss",
)
REPORT_KEYS_SHOWN = {
    "task",
    "headline",
    "labels",
    "n_examples",
    "systems",
    "significance",
    "overfitting",
    "gold",
}
EXAMPLES_SHOWN = 200
REJECTS_SHOWN = 200


def number(value: Any) -> float | None:
    """A finite int or float as float; anything else (bool, str, None, NaN) as None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        low, high = number(value[0]), number(value[1])
        if low is not None and high is not None:
            return low, high
    return None


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or not JSON."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _read_json(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _read_json(path: str, _mtime_ns: int, _size: int) -> Any:
    """Cached on the file's modification time and size: the runs list reads every run's report."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path, limit: int) -> tuple[list[dict[str, Any]], int]:
    """The first `limit` object rows of a JSONL file and the number of its non-empty lines."""
    rows: list[dict[str, Any]] = []
    total = 0
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                total += 1
                if len(rows) < limit:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        row = None
                    if not isinstance(row, dict):
                        row = {
                            "kind": "unreadable",
                            "reason": f"line {total} is not a JSON object: {line[:500]}",
                        }
                    rows.append(row)
    except OSError:
        return [], 0
    return rows, total


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (`train.lora.rank`), as `--set` names them."""
    if not isinstance(value, dict):
        return {prefix: value} if prefix else {}
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, dict) and item:
            out.update(flatten(item, name))
        else:
            out[name] = item
    return out


@dataclass(frozen=True)
class Headline:
    """The metric a run is ranked by, for one of its systems, with its 95% interval when the report has one."""

    metric: str
    system: str
    value: float
    interval: tuple[float, float] | None


@dataclass(frozen=True)
class RunSummary:
    """One line of the runs list."""

    id: str
    name: str
    status: str
    task: str | None
    base_model: str
    method: str | None
    created_at: Any
    finished_at: Any
    parent_run: str | None
    error: str | None
    run_dir: Path
    config: dict[str, Any]
    headline: Headline | None


def method_of(config: dict[str, Any]) -> str | None:
    """`sft, lora rank 16`, `dpo, full`: how a run trained, from its config."""
    train = mapping(config.get("train"))
    if not train:
        return None
    method = str(train.get("method", "sft"))
    adapter = train.get("adapter")
    if not adapter:
        return f"{method}, full"
    rank = mapping(train.get("lora")).get("rank")
    return f"{method}, {adapter}" + (f" rank {rank}" if rank is not None else "")


def headline_of(report: Any) -> Headline | None:
    """The fine-tuned system's headline metric (else the first system's), or None for a report without one."""
    report = mapping(report)
    metric, systems = report.get("headline"), mapping(report.get("systems"))
    if not isinstance(metric, str) or not systems:
        return None
    system = FINE_TUNED if FINE_TUNED in systems else next(iter(systems))
    value = number(mapping(systems[system]).get(metric))
    if value is None:
        return None
    intervals = mapping(mapping(report.get("significance")).get("intervals"))
    return Headline(metric, system, value, interval(intervals.get(system)))


def summarize(row: dict[str, Any]) -> RunSummary:
    """A registry row with what its files add: task, method, headline metric."""
    run_dir = Path(str(row.get("run_dir", "")))
    try:
        config = mapping(json.loads(row.get("config") or "{}"))
    except ValueError:
        config = {}
    report = read_json(run_dir / "eval" / "report.json")
    task = mapping(report).get("task") or mapping(read_json(run_dir / "data" / "audit.json")).get("task")
    return RunSummary(
        id=str(row["id"]),
        name=str(row.get("name", "")),
        status=str(row.get("status", "unknown")),
        task=task if isinstance(task, str) else None,
        base_model=str(row.get("base_model", "")),
        method=method_of(config),
        created_at=row.get("created_at"),
        finished_at=row.get("finished_at"),
        parent_run=row.get("parent_run"),
        error=row.get("error"),
        run_dir=run_dir,
        config=config,
        headline=headline_of(report),
    )


SORT_KEYS = ("created", "name", "status", "task", "base_model", "method", "metric")


def list_runs(
    registry: Registry,
    visible: Callable[[dict[str, Any]], bool],
    query: str = "",
    status: str = "",
    task: str = "",
    sort: str = "created",
    descending: bool = True,
) -> tuple[list[RunSummary], list[str], list[str]]:
    """The runs matching the filters, sorted; and every status and task present, for the filter menus.

    Runs without a value for the sort key (no metric yet) come last in either order.
    """
    runs = [summarize(row) for row in registry.list_runs() if visible(row)]
    statuses = sorted({r.status for r in runs})
    tasks = sorted({r.task for r in runs if r.task})
    needle = query.strip().lower()
    if needle:
        runs = [r for r in runs if needle in f"{r.id} {r.base_model} {r.method or ''}".lower()]
    if status:
        runs = [r for r in runs if r.status == status]
    if task:
        runs = [r for r in runs if r.task == task]

    def key(run: RunSummary) -> Any:
        if sort == "metric":
            return run.headline.value if run.headline else None
        if sort == "created":
            return str(run.created_at or "")
        return getattr(run, sort if sort in SORT_KEYS else "id") or None

    present = sorted((r for r in runs if key(r) is not None), key=key, reverse=descending)
    return present + [r for r in runs if key(r) is None], statuses, tasks


@dataclass(frozen=True)
class Example:
    """One evaluated example: what was asked, the reference, and each system's answer."""

    prompt: str
    gold: str | None
    predictions: dict[str, str]

    @property
    def wrong(self) -> bool:
        """The fine-tuned system's answer (else the first system's) differs from the reference."""
        if self.gold is None or not self.predictions:
            return False
        answer = self.predictions.get(FINE_TUNED, next(iter(self.predictions.values())))
        return answer != self.gold


@dataclass(frozen=True)
class Evaluation:
    """`eval/report.json`, arranged for the page; every part may be empty."""

    task: str | None
    headline: str | None
    n_examples: int | None
    labels: list[str]
    systems: list[str]
    metrics: list[str]  # columns of the metric table: scalar numbers any system has
    values: dict[str, dict[str, float | int]]  # system -> metric -> value (counts are ints)
    intervals: dict[str, tuple[float, float]]  # system -> interval of the headline metric
    per_label: dict[
        str, dict[str, dict[str, float]]
    ]  # per_class_f1, support, ... -> system -> label -> value
    counts: set[
        str
    ]  # the per-label tables of whole numbers (support, predicted counts), shown without decimals
    confusion: dict[str, list[list[float]]]  # system -> square matrix over `labels` (rows gold)
    findings: list[str]  # the paired test and the overfitting check, in the words of the terminal report
    examples: list[Example]
    examples_total: int
    examples_note: str | None  # why inputs could not be shown, when they could not
    texts: dict[str, dict[str, str]]  # system -> other words the report says of it (the scoring it used, ...)
    more: dict[
        str, dict[str, Any]
    ]  # system -> parts of its entry this page has no view for, shown as they are
    extra: dict[str, Any]  # report keys this page has no view for, shown as they are


def read_evaluation(report: Any, run_dir: Path, config: dict[str, Any]) -> Evaluation | None:
    """The evaluation of a run as the page shows it; None when the run has no readable report."""
    if not isinstance(report, dict):
        return None
    systems_raw = mapping(report.get("systems"))
    systems = [str(s) for s in systems_raw]
    labels = [str(label) for label in report.get("labels") or [] if isinstance(label, str | int)]
    values: dict[str, dict[str, float | int]] = {}
    per_label: dict[str, dict[str, dict[str, float]]] = {}
    confusion: dict[str, list[list[float]]] = {}
    texts: dict[str, dict[str, str]] = {}
    more: dict[str, dict[str, Any]] = {}
    for system in systems:
        metrics = mapping(systems_raw[system])
        values[system], texts[system], more[system] = {}, {}, {}
        for name, item in metrics.items():
            if number(item) is not None:
                values[system][name] = item  # a count stays an int, shown without decimals
            elif isinstance(item, str):
                texts[system][name] = item
            elif isinstance(item, dict) and item and all(number(v) is not None for v in item.values()):
                per_label.setdefault(name, {})[system] = {str(k): float(v) for k, v in item.items()}
            elif name == "confusion_matrix" and isinstance(item, list) and _square(item, len(labels)):
                confusion[system] = [[float(c) for c in row] for row in item]
            elif name != "predictions":
                more[system][name] = item
    headline = report.get("headline") if isinstance(report.get("headline"), str) else None
    found = {m for v in values.values() for m in v}
    order = [headline] if headline in found else []
    order += [m for m in KNOWN_METRICS if m in found and m not in order]
    order += sorted(found - set(order))
    significance = mapping(report.get("significance"))
    intervals = {
        s: i for s, i in ((s, interval(mapping(significance.get("intervals")).get(s))) for s in systems) if i
    }
    examples, total, note = _examples(report, systems_raw, run_dir, config)
    n = report.get("n_examples")
    return Evaluation(
        task=report.get("task") if isinstance(report.get("task"), str) else None,
        headline=headline,
        n_examples=n if isinstance(n, int) and not isinstance(n, bool) else None,
        labels=labels,
        systems=systems,
        metrics=order,
        values=values,
        intervals=intervals,
        per_label=per_label,
        confusion=confusion,
        findings=_findings(report),
        examples=examples,
        examples_total=total,
        examples_note=note,
        counts={
            name
            for name, by_system in per_label.items()
            if all(v.is_integer() for values in by_system.values() for v in values.values())
        },
        texts={s: t for s, t in texts.items() if t},
        more={s: m for s, m in more.items() if m},
        extra={k: v for k, v in report.items() if k not in REPORT_KEYS_SHOWN},
    )


def _findings(report: dict[str, Any]) -> list[str]:
    """The sentences the terminal prints under its table; a part of the report they cannot read is skipped."""
    from specialize.evaluate.overfitting import describe
    from specialize.evaluate.report import paired_test_line

    lines = [_quietly(paired_test_line, report), _quietly(describe, report.get("overfitting"))]
    return [line for line in lines if line]


def _quietly(make: Callable[[Any], str | None], part: Any) -> str | None:
    try:
        return make(part)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None  # written by another version of evaluation: the page shows the report's numbers alone


def _square(matrix: Any, n: int) -> bool:
    return (
        n > 0
        and isinstance(matrix, list)
        and len(matrix) == n
        and all(isinstance(r, list) and len(r) == n and all(number(c) is not None for c in r) for r in matrix)
    )


def _examples(
    report: dict[str, Any], systems: dict[str, Any], run_dir: Path, config: dict[str, Any]
) -> tuple[list[Example], int, str | None]:
    """Each evaluated example with every system's answer, the fine-tuned model's errors first.

    The report keeps each system's predictions in the order of the examples (and, from report schema 2 on, the
    reference answers as `gold`), but not which validation rows they were: the inputs are the run's validation
    split when every row was evaluated, or, for a schema 1 report, the seeded sample of `eval.max_examples` rows
    that schema 1 always drew. A split whose references disagree with the report's is not shown as its inputs.
    """
    from specialize.data import read_prepared, seeded_sample

    predictions = {
        s: [str(p) for p in m["predictions"]]
        for s, m in systems.items()
        if isinstance(m, dict) and isinstance(m.get("predictions"), list)
    }
    if not predictions:
        return [], 0, None
    n = min(len(p) for p in predictions.values())
    task = report.get("task")
    try:
        rows = read_prepared(run_dir / "data" / "validation.jsonl")
    except (OSError, ValueError):
        rows = []
    limit = number(mapping(config.get("eval")).get("max_examples"))
    if len(rows) > n and "schema" not in report and limit is not None:
        rows = seeded_sample(rows, int(limit), config["seed"] if isinstance(config.get("seed"), int) else 0)
    recorded = report.get("gold")
    gold = [str(g) for g in recorded] if isinstance(recorded, list) and len(recorded) >= n else None
    note = None
    if len(rows) != n or (gold is not None and [_gold(r, task) for r in rows] != gold[:n]):
        note = (
            "report.json does not record which validation rows were evaluated (a sample of them), so only the "
            "references and answers are shown; evaluating every row (no eval.max_examples) shows the inputs too."
        )
        rows = [{} for _ in range(n)]
    examples = [
        Example(
            prompt_text(row),
            gold[i] if gold is not None else _gold(row, task),
            {s: p[i] for s, p in predictions.items()},
        )
        for i, row in enumerate(rows)
    ]
    examples.sort(key=lambda e: not e.wrong)  # stable: errors first, each group in evaluation order
    return examples[:EXAMPLES_SHOWN], n, note


def prompt_text(row: dict[str, Any]) -> str:
    """What a row asks: its turns before the final answer (system prompt left out), or its prompt or text."""
    messages = row.get("messages")
    if isinstance(messages, list):
        turns = [m for m in messages if isinstance(m, dict)]
        if turns and turns[-1].get("role") == "assistant":
            turns = turns[:-1]
        return "\n\n".join(str(m.get("content", "")) for m in turns if m.get("role") != "system")
    for key in ("prompt", "text"):
        if isinstance(row.get(key), str):
            return str(row[key])
    return ""


def _gold(row: dict[str, Any], task: Any) -> str | None:
    if not row:
        return None
    if task == "preference":
        return "chosen"
    if row.get("label") is not None and task in ("classification", "multiple_choice"):
        return str(row["label"])
    messages = row.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        return str(messages[-1].get("content", ""))
    return None


@dataclass(frozen=True)
class RunDetail:
    """Everything the run page shows."""

    run: RunSummary
    config_text: str | None
    audit: dict[str, Any]
    rejects: list[dict[str, Any]]
    rejects_total: int
    training: dict[str, Any]  # train/result.json
    evaluation: Evaluation | None
    files: list[str] = field(default_factory=list)  # run files the page links to


LINKED_FILES = {
    "report.html": "eval/report.html",
    "report.json": "eval/report.json",
    "model_card.md": "model_card.md",
    "config.resolved.yaml": "config.resolved.yaml",
    "audit.json": "data/audit.json",
}


def run_detail(row: dict[str, Any]) -> RunDetail:
    """The run page's content, for the run's registry row."""
    run = summarize(row)
    try:
        config_text: str | None = (run.run_dir / "config.resolved.yaml").read_text(encoding="utf-8")
    except OSError:
        config_text = None
    rejects, total = read_jsonl(run.run_dir / "data" / "rejects.jsonl", REJECTS_SHOWN)
    report = read_json(run.run_dir / "eval" / "report.json")
    return RunDetail(
        run=run,
        config_text=config_text,
        audit=mapping(read_json(run.run_dir / "data" / "audit.json")),
        rejects=rejects,
        rejects_total=total,
        training=mapping(read_json(run.run_dir / "train" / "result.json")),
        evaluation=read_evaluation(report, run.run_dir, run.config),
        files=[name for name, rel in LINKED_FILES.items() if (run.run_dir / rel).is_file()],
    )


def training_curve(registry: Registry, run: dict[str, Any]) -> dict[str, Any]:
    """The run's status and its training metrics so far, by step, for the live curve."""
    run_id = str(run["id"])
    steps: dict[int, dict[str, float]] = {}
    for m in registry.get_metrics(run_id, "train"):
        value = number(m.get("value"))
        if m.get("step") is not None and value is not None:
            steps.setdefault(int(m["step"]), {})[str(m["name"])] = value
    points = [{"step": step, **values} for step, values in sorted(steps.items())]
    return {"run": run_id, "status": run.get("status"), "points": points}
