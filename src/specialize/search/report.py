"""What a study leaves for people: the trials table, the best config as a runnable YAML, and the study's HTML
report (optimisation history, parameter importances, the tuned run next to the default one, the learning curve).

Reads the study from its storage and the `eval/report.json` of the runs `specialize tune` trained after the
search; writes `search/best.yaml`, `search/summary.json` and `search/report.html` in the study run's directory.
"""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from specialize.config import RunConfig
from specialize.runs import write_atomic
from specialize.search.study import StudyResult


@dataclass(frozen=True)
class CurvePoint:
    """The tuned config trained on a share of the training data: its headline metric on the validation split."""

    fraction: float
    train_examples: int
    run: str
    value: float
    low: float
    high: float
    report: str  # the run's eval/report.json


def trials_table(result: StudyResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the trials table: parameters, metric (and, for label tasks, the scoring variant it was
    read under), steps, seconds, state (and why it ended)."""
    keys = list(dict.fromkeys(k for t in result.trials for k in t.params))
    scored = any(t.scoring for t in result.trials)
    rows = [
        [
            str(t.number),
            t.state,
            "-" if t.value is None else f"{t.value:.4f}",
            *([t.scoring or "-"] if scored else []),
            *(_value(t.params.get(k)) for k in keys),
            "-" if t.steps is None else str(t.steps),
            "-" if t.seconds is None else f"{t.seconds:.0f}",
            t.reason or "",
        ]
        for t in result.trials
    ]
    scoring = ["scoring"] if scored else []
    return ["trial", "state", result.metric, *scoring, *keys, "steps", "seconds", "note"], rows


def _value(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def write_best_config(config: RunConfig, study: str, trial: int, path: Path) -> Path:
    """The best trial's config as a YAML that `specialize run` takes as it is."""
    doc = config.model_dump(mode="json", exclude={"search"})
    header = (
        f"# specialize run {path.name}\n"
        f"# The best trial ({trial}) of the hyperparameter study {study} (`specialize tune`).\n"
    )
    write_atomic(path, header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def write_study_report(
    study_dir: Path,
    result: StudyResult,
    storage: str,
    best_config: Path | None,
    tuned: Path | None,
    default: Path | None,
    curve: list[CurvePoint],
    verdict: dict[str, Any] | None = None,
) -> Path:
    """Write `search/summary.json` and `search/report.html`; returns the HTML's path.

    Args:
        study_dir: the study run's directory.
        result: the study's trials.
        storage: the study's storage (for the parameter importances).
        best_config: the best trial's YAML.
        tuned: `eval/report.json` of the tuned config's full run.
        default: `eval/report.json` of the default config's full run.
        curve: the learning curve, smallest share first.
        verdict: what the tuned and default runs' paired tests conclude (`search.verdict`).
    """
    out = study_dir / "search"
    header, rows = trials_table(result)
    importances = _importances(result.study, storage)
    summary = {
        "study": result.study,
        "metric": result.metric,
        "direction": "maximize" if result.maximize else "minimize",
        "eval_every_examples": result.eval_every,
        "objective_sample": result.sample,
        "objective_sample_from": result.sample_from,
        "best_trial": result.best.number if result.best else None,
        "best_params": result.best.params if result.best else None,
        "best_config": str(best_config) if best_config else None,
        "importances": importances,
        "trials": [t.__dict__ for t in result.trials],
        "runs": {"tuned": str(tuned) if tuned else None, "default": str(default) if default else None},
        "learning_curve": [p.__dict__ for p in curve],
        "verdict": verdict,
    }
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    done = sum(t.state == "completed" for t in result.trials)
    pruned = sum(t.state == "pruned" for t in result.trials)
    rows_of = (
        "validation examples"
        if result.sample_from == "validation"
        else "training examples left out by the data caps (never trained on)"
    )
    parts = [
        f"<h1>Hyperparameter study {html.escape(result.study)}</h1>",
        f"<p>{len(result.trials)} trials: {done} completed, {pruned} pruned. Objective: {result.metric} "
        f"({'higher' if result.maximize else 'lower'} is better) on a seeded sample of {result.sample} {rows_of} "
        f"(stratified by label for classification; labels and choices read under eval.scoring), evaluated every {result.eval_every} training examples; successive-halving pruning.</p>",
    ]
    if verdict:
        parts += ["<h2>Verdict</h2>", *(f"<p>{html.escape(line)}</p>" for line in verdict["lines"])]
    parts += ["<h2>Trials</h2>", _table(header, rows)]
    if best_config is not None and result.best is not None:
        parts += [
            f"<h2>Best config (trial {result.best.number})</h2>",
            f"<pre>{html.escape(best_config.read_text(encoding='utf-8'))}</pre>",
        ]
    scored = [t for t in result.trials if t.value is not None]
    if scored:
        parts += ["<h2>Optimisation history</h2>", _img(_history_plot(result))]
    if importances:
        parts += ["<h2>Parameter importances</h2>", _img(_importance_plot(importances))]
    else:
        parts.append("<p>Parameter importances need at least two completed trials that differ.</p>")
    parts += _comparison(tuned, default, result.sample_from)
    if curve:
        parts += [
            "<h2>Learning curve: would more data help?</h2>",
            _table(
                ["share of the training data", "training examples", result.metric, "95% CI", "run"],
                [
                    [
                        f"{p.fraction:.0%}",
                        str(p.train_examples),
                        f"{p.value:.4f}",
                        f"{p.low:.3f}-{p.high:.3f}",
                        p.run,
                    ]
                    for p in curve
                ],
            ),
            _img(_curve_plot(curve)),
        ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>study "
        + html.escape(result.study)
        + "</title><style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    path = out / "report.html"
    write_atomic(path, page)
    return path


def _comparison(tuned: Path | None, default: Path | None, sample_from: str) -> list[str]:
    """The tuned and the default config's full runs, each system with its interval, and each one's paired test."""
    from specialize.evaluate.report import paired_test_line, system_name

    reports = {
        name: json.loads(p.read_text(encoding="utf-8"))
        for name, p in (("tuned", tuned), ("default", default))
        if p
    }
    if not reports:
        return []
    first = next(iter(reports.values()))
    systems = list(dict.fromkeys(s for r in reports.values() for s in r["systems"]))
    rows = []
    for system in systems:
        cells = [system_name(system)]
        for report in reports.values():
            m = report["systems"].get(system)
            low, high = report["significance"]["intervals"].get(system, (None, None))
            cells.append("-" if m is None else f"{m[report['headline']]:.4f} ({low:.3f}-{high:.3f})")
        rows.append(cells)
    excluded = (first.get("sample") or {}).get("excluded", 0)
    if sample_from != "validation":
        where = (
            f"the validation split ({first['n_examples']} examples; the trials were ranked on training rows)"
        )
    elif excluded:
        where = (
            f"the validation examples the trials were not ranked on ({first['n_examples']}; the {excluded} of the "
            "search sample left out)"
        )
    else:
        where = (
            f"the validation split ({first['n_examples']} examples, the search sample among them: the winner was "
            "chosen on some of these)"
        )
    parts = [
        f"<h2>Tuned and default config on {where}</h2>",
        _table(["system", *(f"{n} config: {first['headline']} (95% CI)" for n in reports)], rows),
    ]
    for name, report in reports.items():
        line = paired_test_line(report)
        if line:
            parts.append(f"<p>{name} config: {html.escape(line)}</p>")
    return parts


def _importances(study: str, storage: str) -> dict[str, float]:
    """PED-ANOVA importances (Optuna's default) of the parameters over the completed trials; empty when there
    are too few."""
    import optuna

    from specialize.search.worker import storage_for

    opened = optuna.load_study(study_name=study, storage=storage_for(storage))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "importances will be equal": the plot shows it
            found = optuna.importance.get_param_importances(opened, evaluator=evaluator)
    except (RuntimeError, ValueError):  # fewer than two completed trials, or no parameter varied
        return {}
    return {k: float(v) for k, v in found.items()}


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _history_plot(result: StudyResult) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colours = {"completed": "#1f77b4", "pruned": "#ff7f0e"}
    for state, colour in colours.items():
        points = [(t.number, t.value) for t in result.trials if t.state == state and t.value is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), color=colour, label=state, zorder=3)
    best, line = None, []
    for t in result.trials:
        if t.state == "completed" and t.value is not None:
            better = best is None or (t.value > best if result.maximize else t.value < best)
            best = t.value if better else best
        if best is not None:
            line.append((t.number, best))
    if line:
        ax.step(*zip(*line, strict=True), where="post", color="#2ca02c", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(result.metric)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _importance_plot(importances: dict[str, float]) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(importances) + 1.2))
    ax.barh(list(importances), list(importances.values()), color="#1f77b4")
    ax.invert_yaxis()
    ax.set_xlabel("importance (PED-ANOVA)")
    return _png(fig)


def _curve_plot(curve: list[CurvePoint]) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = [p.train_examples for p in curve]
    y = [p.value for p in curve]
    ax.errorbar(
        x,
        y,
        yerr=[
            [v - p.low for v, p in zip(y, curve, strict=True)],
            [p.high - v for v, p in zip(y, curve, strict=True)],
        ],
        marker="o",
        capsize=4,
    )
    ax.set_xlabel("training examples")
    ax.set_ylabel("fine-tuned, validation")
    ax.grid(alpha=0.3)
    return _png(fig)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _figure().close(fig)
    return buf.getvalue()


def _img(png: bytes) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
