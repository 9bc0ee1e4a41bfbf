"""The HTML report of a run: comparison table, loss curve and confusion matrices, in one self-contained file.

Reads `train/metrics.jsonl`, `eval/report.json` and `data/audit.json` of a run; writes `eval/report.html` with the
plots embedded as PNG, so the report can be mailed or archived as a single file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from specialize.evaluate.overfitting import describe
from specialize.runs import write_atomic

SYSTEM_NAMES = {
    "base_zero_shot": "base, zero-shot",
    "base_few_shot": "base, few-shot",
    "base_rag": "base, RAG",
    "fine_tuned": "fine-tuned",
    "fine_tuned_rag": "fine-tuned, RAG",
}
TABLE_METRICS = {
    "classification": [
        "accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "micro_f1",
        "invalid_answer_rate",
    ],
    "multiple_choice": ["accuracy"],
    "preference": ["preference_accuracy"],
    "text": ["perplexity", "loss"],
    "generation": ["exact_match", "numeric_match", "rouge_l", "bleu", "perplexity"],
}


def system_name(system: str) -> str:
    """How a system is called in tables and plots."""
    return SYSTEM_NAMES.get(system, system)


def comparison_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the system-by-metric table, shared by the terminal and the HTML report."""
    first: dict[str, Any] = next(iter(report["systems"].values()), {})
    names = [name for name in TABLE_METRICS[report["task"]] if name in first]
    intervals = report.get("significance", {}).get("intervals", {})
    rows = [
        [
            system_name(system),
            *(f"{m[name]:.3f}" for name in names),
            *([f"{intervals[system][0]:.3f}-{intervals[system][1]:.3f}"] if intervals else []),
        ]
        for system, m in report["systems"].items()
    ]
    return ["system", *names, *([f"{report['headline']} 95% CI"] if intervals else [])], rows


def paired_test_line(report: dict[str, Any]) -> str | None:
    """One sentence on whether the fine-tuned model's lead over the best alternative is more than noise."""
    test = report.get("significance", {}).get("paired_test")
    if not test:
        return None
    low, high = test["interval"]
    return (
        f"{system_name(test['system'])} vs the best alternative, {system_name(test['against'])}: "
        f"{test['difference']:+.3f} {report['headline']} (95% CI {low:+.3f} to {high:+.3f}, paired bootstrap "
        f"p={test['p_value']:.3f})"
    )


def write_html_report(run_root: Path, title: str) -> Path:
    """Render `eval/report.html` for the run at `run_root` and return its path."""
    report = json.loads((run_root / "eval" / "report.json").read_text(encoding="utf-8"))
    header, rows = comparison_rows(report)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{report['n_examples']} validation examples, task: {report['task']}.</p>",
        _table(header, rows),
        f"<p>{html.escape(paired_test_line(report) or '')}</p>",
        f"<p>{html.escape(describe(report.get('overfitting')) or '')}</p>",
    ]
    if report.get("significance", {}).get("intervals"):
        parts += [
            f"<h2>{html.escape(report['headline'])} of every system, with 95% intervals</h2>",
            _img(_bars(report)),
        ]
    metrics_file = run_root / "train" / "metrics.jsonl"
    if metrics_file.exists():
        points = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        result = run_root / "train" / "result.json"
        if result.exists():  # the validation loss at the end of training
            done = json.loads(result.read_text(encoding="utf-8"))
            points.append({"step": done["steps"], "final_validation_loss": done["validation_loss"]})
        if any("loss" in p for p in points):
            parts += ["<h2>Loss</h2>", _img(_loss_plot(points))]
    if report["task"] == "classification":
        parts.append("<h2>Confusion matrices (rows: gold, columns: predicted)</h2>")
        parts += [
            _img(_confusion_plot(system_name(s), m["confusion_matrix"], report["labels"]))
            for s, m in report["systems"].items()
        ]
        parts += ["<h2>Per-class F1</h2>", _per_class_table(report)]
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


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _per_class_table(report: dict[str, Any]) -> str:
    systems = list(report["systems"])
    header = ["label", "support", *(system_name(s) for s in systems)]
    first = report["systems"][systems[0]]
    rows = [
        [
            label,
            str(first["support"][label]),
            *(f"{report['systems'][s]['per_class_f1'][label]:.2f}" for s in systems),
        ]
        for label in report["labels"]
    ]
    return _table(header, rows)


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _loss_plot(points: list[dict[str, Any]]) -> bytes:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    train = [p for p in points if "loss" in p]
    ax.plot([p["step"] for p in train], [p["loss"] for p in train], label="training loss")
    # Validation loss: during training with early stopping, and once at the end; a widening gap means overfitting.
    val = [(p["step"], p.get("validation_loss", p.get("final_validation_loss"))) for p in points]
    val = [(step, loss) for step, loss in val if loss is not None]
    if val:
        ax.plot(*zip(*val, strict=True), "o--", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _bars(report: dict[str, Any]) -> bytes:
    """The headline metric of each system as a bar, its bootstrap interval as an error bar."""
    plt = _figure()
    systems = list(report["systems"])
    values = [report["systems"][s][report["headline"]] for s in systems]
    intervals = report["significance"]["intervals"]
    below = [max(v - intervals[s][0], 0.0) for s, v in zip(systems, values, strict=True)]
    above = [max(intervals[s][1] - v, 0.0) for s, v in zip(systems, values, strict=True)]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(systems) + 1.2))
    colours = ["#d62728" if s.startswith("fine_tuned") else "#1f77b4" for s in systems]
    ax.barh([system_name(s) for s in systems], values, xerr=[below, above], color=colours, capsize=4)
    ax.invert_yaxis()  # first system on top, as in the table
    ax.set_xlim(0, 1)
    ax.set_xlabel(report["headline"])
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


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
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    ax.set_title(name)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    return _png(fig)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _figure().close(fig)
    return buf.getvalue()


def _img(png: bytes) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def comparison_text(report: dict[str, Any], markdown: bool = False) -> str:
    """The comparison as a person reads it: the system-by-metric table, then the paired test and overfitting.

    The one rendering behind the terminal (`specialize run`, `eval`, `train --resume`) and the model card, so
    both always show the same rows.

    Args:
        report: a written `report.json`.
        markdown: a Markdown table (the model card) instead of aligned plain text (the terminal).
    """
    header, rows = comparison_rows(report)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        table = "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    else:
        table = text_table(header, rows)
    findings = [line for line in (paired_test_line(report), describe(report.get("overfitting"))) if line]
    # A Markdown paragraph joins single lines: each finding needs a blank line of its own there.
    return "\n\n".join([table, ("\n\n" if markdown else "\n").join(findings)] if findings else [table])


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns aligned with spaces, under a dashed rule: how the command line shows every table."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*row) for row in rows]
    return "\n".join(out)
