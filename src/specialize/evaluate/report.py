"""The report of a run as people read it: the comparison table, scoring variants, label distributions, plots.

Reads `eval/report.json` (through `load_report`, which re-renders a report written under an older schema or
refuses one it cannot read), `train/metrics.jsonl` and `data/audit.json` of a run; writes `eval/report.html`, one
self-contained file with the plots embedded as SVG. SVG rather than PNG: every number a plot shows stays text in
it (axis ticks, bar values, matrix counts), so the test can read back what a reader sees and hold it to
`report.json`. The terminal and the model card use the same rows (`comparison_rows`, `variant_rows`, ...).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from specialize.errors import EvalError
from specialize.evaluate.evaluation import DEFINITIONS, REPORT_SCHEMA
from specialize.evaluate.overfitting import describe
from specialize.evaluate.systems import system_title
from specialize.runs import write_atomic

TABLE_METRICS = {
    "classification": [
        "accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "labels_averaged",
        "micro_f1",
        "invalid_answer_rate",
        "reward",
    ],
    "multiple_choice": ["accuracy", "reward"],
    "preference": ["preference_accuracy", "reward"],
    "text": ["perplexity", "loss"],
    "generation": [
        "exact_match",
        "numeric_match",
        "number_strict",
        "number_lenient",
        "rouge_l",
        "bleu",
        "perplexity",
        "reward",
    ],
}
VARIANTS = ("raw", "length", "calibrated", "pmi")


def system_name(system: str) -> str:
    """How a system is called in tables and plots."""
    return system_title(system)


def load_report(path: Path) -> dict[str, Any]:
    """`report.json` under the current schema; an older one is re-rendered from what it kept, with a `note`.

    Schema 1 (before macro averages were taken over the labels present) kept each system's confusion matrix:
    its estimate and interval are recomputed from those counts under today's definition, which needs the (gold,
    predicted) pairs but not their order. Its paired test needs the order, which schema 1 did not keep, so it is
    dropped, and the note says so. Metrics of other tasks kept their definitions and are read as they are.

    Raises:
        EvalError: the report was written by a newer specialize.
    """
    report = json.loads(path.read_text(encoding="utf-8"))
    schema = report.get("schema", 1)
    if schema > REPORT_SCHEMA:
        raise EvalError(
            f"{path}: report schema {schema} was written by a newer specialize (this one reads up to "
            f"{REPORT_SCHEMA}); upgrade specialize to read it"
        )
    if schema == REPORT_SCHEMA:
        return report
    report.update(schema=REPORT_SCHEMA, upgraded_from=schema, scoring=None, gold=None)
    if report["task"] != "classification":
        report["note"] = (
            "written by an earlier specialize (report schema 1); its metrics are defined as today's"
        )
        return report
    from specialize.evaluate.metrics import classification_metrics
    from specialize.evaluate.significance import interval, resampled_scores

    labels = report["labels"]
    intervals = {}
    for system, metrics in report["systems"].items():
        pairs = [
            (labels[i], labels[j])
            for i, row in enumerate(metrics["confusion_matrix"])
            for j, count in enumerate(row)
            for _ in range(count)
        ]
        gold, predicted = [g for g, _ in pairs], [p for _, p in pairs]
        metrics.update(classification_metrics(gold, predicted, labels))
        intervals[system] = interval(resampled_scores(gold, predicted, labels, 0))
    report["significance"] = {**report.get("significance", {}), "intervals": intervals}
    report["significance"].pop("paired_test", None)
    report["definitions"] = DEFINITIONS
    report["note"] = (
        f"written by an earlier specialize (report schema {schema}: macro averages over all {len(labels)} labels "
        "of the set); estimates and intervals recomputed from its confusion matrices under today's definition; "
        "no paired test (schema 1 kept no gold answers per example): re-evaluate the run for one"
    )
    return report


def recorded_scoring(report_path: Path) -> dict[str, str]:
    """Each system's scoring variant as a run's validation report records it, for scoring a later test file the
    same way (`evaluate(scoring_choice=...)`). A report from before scoring variants used raw scores throughout.

    Raises:
        EvalError: the run has no validation report to take the choice from.
    """
    if not report_path.is_file():
        raise EvalError(
            f"{report_path}: no validation report, so no scoring variant was chosen for eval.scoring: best; "
            "finish the run's evaluation first (`specialize train --resume RUN`), or set eval.scoring"
        )
    report = load_report(report_path)
    scoring = report.get("scoring") or {}
    return scoring.get("chosen") or dict.fromkeys(report["systems"], "raw")


def comparison_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the system-by-metric table, shared by the terminal, the HTML report and the model card.

    A system scored by label log-probabilities says under which variant; a macro average has the number of
    labels it averages beside it (`labels_averaged`).
    """
    first: dict[str, Any] = next(iter(report["systems"].values()), {})
    names = [name for name in TABLE_METRICS[report["task"]] if name in first]
    intervals = report.get("significance", {}).get("intervals", {})
    scored = any("scoring" in m for m in report["systems"].values())
    rows = [
        [
            system_name(system),
            *([m.get("scoring", "")] if scored else []),
            *(_cell(m[name]) for name in names),
            *([f"{intervals[system][0]:.3f}-{intervals[system][1]:.3f}"] if intervals else []),
        ]
        for system, m in report["systems"].items()
    ]
    header = [
        "system",
        *(["scoring"] if scored else []),
        *(n.replace("_", " ") if n == "labels_averaged" else n for n in names),
        *([f"{report['headline']} 95% CI"] if intervals else []),
    ]
    return header, rows


def _cell(value: Any) -> str:
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def variant_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Each system's headline metric and interval under every scoring variant; `*` marks the one it is reported
    with, `collapsed` a variant under which one label takes the answers. None for tasks without label scores."""
    scoring = report.get("scoring")
    if not scoring:
        return None
    rows = []
    for system, by_variant in scoring["variants"].items():
        cells = []
        for variant in VARIANTS:
            v = by_variant[variant]
            mark = "*" if scoring["chosen"].get(system) == variant else ""
            flag = " collapsed" if (v.get("collapse") or {}).get("flagged") else ""
            cells.append(f"{v['value']:.3f}{mark} ({v['interval'][0]:.3f}-{v['interval'][1]:.3f}){flag}")
        rows.append([system_name(system), *cells])
    return ["system", *(f"{v} {report['headline']} (95% CI)" for v in VARIANTS)], rows


def sample_line(report: dict[str, Any]) -> str | None:
    """Which examples were evaluated, when not all of them or not every label."""
    sample = report.get("sample")
    if not sample:
        return None
    covered = sample.get("labels_covered")
    coverage = f", covering {covered} of {sample['labels']} labels" if covered is not None else ""
    excluded = sample.get("excluded", 0)
    left_out = f" ({excluded} left out by eval.exclude_examples)" if excluded else ""
    if sample["method"] == "all" and covered == sample.get("labels") and not excluded:
        return None
    if sample["method"] == "all":
        return f"all {sample['examples']} examples{left_out}{coverage}"
    return f"{sample['examples']} of {sample['of']} examples{left_out}, {sample['method']}{coverage}"


def collapse_lines(report: dict[str, Any]) -> list[str]:
    """One line per system whose answers collapse onto one label (under the variant it is reported with)."""
    out = []
    for system, m in report["systems"].items():
        c = m.get("collapse")
        if c and c["flagged"]:
            out.append(
                f"collapse: {system_name(system)} answers {c['label']!r} for {c['predicted']} of {c['of']} examples "
                f"({c['share']:.0%}; gold share {c['gold_share']:.0%}, binomial p={c['p_value']:.1e})"
            )
    return out


def findings(report: dict[str, Any]) -> list[str]:
    """Every line below the comparison table: headline choice, paired test, collapses, overfitting, notes."""
    lines = [line for line in (sample_line(report), _scoring_line(report), paired_test_line(report)) if line]
    lines += collapse_lines(report)
    lines += [line for line in (describe(report.get("overfitting")), report.get("note")) if line]
    if report.get("answers_kept_from_earlier_runs"):
        kept = ", ".join(system_name(s) for s in report["answers_kept_from_earlier_runs"])
        lines.append(
            f"{kept}: answers kept by an earlier run with the same base model and prompts, not recomputed"
        )
    if report["task"] == "classification":
        lines.append(
            "macro averages: over the labels in the gold answers or predictions of the examples evaluated "
            "(labels averaged); 95% intervals: paired bootstrap of the same statistic"
        )
    return lines


def _scoring_line(report: dict[str, Any]) -> str | None:
    scoring = report.get("scoring")
    if not scoring:
        return None
    return f"label scoring: {scoring['requested']} ({scoring['how']})"


def paired_test_line(report: dict[str, Any]) -> str | None:
    """One sentence on whether the fine-tuned model's lead over the best alternative is more than noise."""
    test = report.get("significance", {}).get("paired_test")
    if not test:
        return None
    low, high = test["interval"]
    chosen = (report.get("scoring") or {}).get("chosen", {})
    how = f" ({chosen[test['against']]} scoring)" if test["against"] in chosen else ""
    return (
        f"{system_name(test['system'])} vs the best alternative, {system_name(test['against'])}{how}: "
        f"{test['difference']:+.3f} {report['headline']} (95% CI {low:+.3f} to {high:+.3f}, paired bootstrap "
        f"p={test['p_value']:.3f})"
    )


def write_html_report(run_root: Path, title: str) -> Path:
    """Render `eval/report.html` for the run at `run_root` and return its path."""
    report = load_report(run_root / "eval" / "report.json")
    header, rows = comparison_rows(report)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{report['n_examples']} validation examples, task: {report['task']}.</p>",
        _table(header, rows, "comparison"),
        *(f"<p>{html.escape(line)}</p>" for line in findings(report)),
    ]
    variants = variant_rows(report)
    if variants:
        parts += ["<h2>Label scoring variants</h2>", _table(*variants, "variants")]
    if report.get("significance", {}).get("intervals"):
        parts += [
            f"<h2>{html.escape(report['headline'])} of every system, with 95% intervals</h2>",
            _img(_bars(report), "bars"),
        ]
    metrics_file = run_root / "train" / "metrics.jsonl"
    if metrics_file.exists():
        points = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        result = run_root / "train" / "result.json"
        if result.exists():  # the validation loss at the end of training
            done = json.loads(result.read_text(encoding="utf-8"))
            points.append({"step": done["steps"], "final_validation_loss": done["validation_loss"]})
        if any("loss" in p for p in points):
            parts += ["<h2>Loss</h2>", _img(_loss_plot(points), "loss")]
    if report["task"] == "classification":
        parts += [
            "<h2>Predicted labels next to the gold labels</h2>",
            _table(*_distribution_rows(report), "distribution"),
            "<h2>Confusion matrices (rows: gold, columns: predicted)</h2>",
            *(
                _img(
                    _confusion_plot(system_name(s), m["confusion_matrix"], list(m["support"])),
                    f"confusion:{s}",
                )
                for s, m in report["systems"].items()
            ),
            "<h2>Per-class F1 (absent: the label is neither a gold answer nor a prediction here)</h2>",
            _table(*_per_class_rows(report), "per_class"),
        ]
    definitions = report.get("definitions") or {}
    if definitions:
        parts.append("<h2>How the numbers are computed</h2>")
        parts += [f"<p>{html.escape(k)}: {html.escape(v)}.</p>" for k, v in definitions.items()]
    audit = run_root / "data" / "audit.json"
    if audit.exists():
        parts += ["<h2>Data audit</h2>", f"<pre>{html.escape(audit.read_text(encoding='utf-8'))}</pre>"]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    path = run_root / "eval" / "report.html"
    write_atomic(path, page)
    return path


def _table(header: list[str], rows: list[list[str]], name: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table id='{name}'><tr>{head}</tr>{body}</table>"


def _per_class_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    systems = list(report["systems"])
    first = report["systems"][systems[0]]
    rows = [
        [
            label,
            str(first["support"][label]),
            *(_f1_cell(report["systems"][s]["per_class_f1"][label]) for s in systems),
        ]
        for label in first["per_class_f1"]
    ]
    return ["label", "support", *(system_name(s) for s in systems)], rows


def _f1_cell(value: float | None) -> str:
    return "absent" if value is None else f"{value:.2f}"


def _distribution_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """How often each label is the gold answer and how often each system answers it (collapsed ones marked)."""
    systems = report["systems"]
    first = next(iter(systems.values()))
    header = ["label", "gold"]
    for s, m in systems.items():
        flagged = (m.get("collapse") or {}).get("flagged")
        header.append(system_name(s) + (" (collapsed)" if flagged else ""))
    rows = [
        [label, str(first["support"][label]), *(str(m["predicted_counts"][label]) for m in systems.values())]
        for label in first["support"]
    ]
    return header, rows


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Text stays text (not glyph outlines), and ids are stable: what a plot shows can be read back.
    plt.rcParams["svg.fonttype"] = "none"
    plt.rcParams["svg.hashsalt"] = "specialize"
    return plt


def _loss_plot(points: list[dict[str, Any]]) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    train = [p for p in points if "loss" in p]
    ax.plot([p["step"] for p in train], [p["loss"] for p in train], label="training loss", gid="line:train")
    # Validation loss: during training with early stopping, and once at the end; a widening gap means overfitting.
    val = [(p["step"], p.get("validation_loss", p.get("final_validation_loss"))) for p in points]
    val = [(step, loss) for step, loss in val if loss is not None]
    if val:
        ax.plot(*zip(*val, strict=True), "o--", label="validation loss", gid="line:validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _svg(fig)


def _bars(report: dict[str, Any]) -> bytes:
    """The headline metric of each system as a bar with its value written at its end, the bootstrap interval as
    an error bar."""
    plt = _figure()
    systems = list(report["systems"])
    values = [report["systems"][s][report["headline"]] for s in systems]
    intervals = report["significance"]["intervals"]
    below = [max(v - intervals[s][0], 0.0) for s, v in zip(systems, values, strict=True)]
    above = [max(intervals[s][1] - v, 0.0) for s, v in zip(systems, values, strict=True)]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(systems) + 1.2))
    colours = ["#d62728" if s.startswith("fine_tuned") else "#1f77b4" for s in systems]
    bars = ax.barh([system_name(s) for s in systems], values, xerr=[below, above], color=colours, capsize=4)
    ax.invert_yaxis()  # first system on top, as in the table
    top = 1.0 if report["headline"] != "perplexity" else max(i[1] for i in intervals.values()) * 1.1
    ax.set_xlim(0, top)
    for system, bar, value in zip(systems, bars.patches, values, strict=True):
        bar.set_gid(f"bar:{system}")
        ax.text(
            intervals[system][1] + 0.01 * top,
            bar.get_y() + bar.get_height() / 2,
            f"{value:.3f}",
            va="center",
            fontsize=8,
            gid=f"value:{system}",
        )
    bars.errorbar.lines[2][0].set_gid("intervals")
    ax.set_xlabel(report["headline"])
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def _confusion_plot(name: str, matrix: list[list[int]], labels: list[str]) -> bytes:
    plt = _figure()
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    if len(labels) <= 20:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value:
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7, gid=f"cell:{i}:{j}")
    ax.set_title(name)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    return _svg(fig)


def _svg(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg")
    _figure().close(fig)
    return buf.getvalue()


def _img(svg: bytes, name: str) -> str:
    return f"<img id='{html.escape(name)}' src='data:image/svg+xml;base64,{base64.b64encode(svg).decode()}'>"


def comparison_text(report: dict[str, Any], markdown: bool = False) -> str:
    """The comparison as a person reads it: the system-by-metric table, then the paired test and overfitting.

    The one rendering behind the terminal (`specialize run`, `eval`, `train --resume`) and the model card, so
    both always show the same rows.

    Args:
        report: a written `report.json`.
        markdown: a Markdown table (the model card) instead of aligned plain text (the terminal).
    """
    tables = [comparison_rows(report)]
    variants = variant_rows(report)
    if variants:
        tables.append(variants)
    parts = []
    for i, (header, rows) in enumerate(tables):
        if markdown:
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            table = "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
        else:
            table = text_table(header, rows)
        parts.append(
            table if i == 0 else f"under each label-scoring variant (* the one reported above):\n\n{table}"
        )
    lines = findings(report)
    # A Markdown paragraph joins single lines: each finding needs a blank line of its own there.
    if lines:
        parts.append(("\n\n" if markdown else "\n").join(lines))
    return "\n\n".join(parts)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns aligned with spaces, under a dashed rule: how the command line shows every table."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*row) for row in rows]
    return "\n".join(out)
