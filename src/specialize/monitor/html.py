"""The monitoring report as one self-contained HTML page (no script, no external file), from its JSON document."""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: .6em 0 1.4em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.flag { color: #b00020; font-weight: 600; }
.ok { color: #1b5e20; }
.note { color: #666; }
code { background: #f6f6f6; padding: 0 .2em; }
"""


def render_html(doc: dict[str, Any]) -> str:
    """The page for a `monitor_model` report document."""
    window = doc["window"]
    status = (
        "<p class='flag'>Flagged: " + "; ".join(escape(r) for r in doc["reasons"]) + "</p>"
        if doc["flagged"]
        else "<p class='ok'>Nothing crossed a threshold.</p>"
    )
    parts = [
        f"<h1>Monitoring of <code>{escape(doc['model'])}</code></h1>",
        f"<p>Answering run: <code>{escape(str(doc['run']))}</code>; window {escape(window['since'])} to "
        f"{escape(window['until'])} (UTC).</p>",
        status,
        "<h2>Traffic per model</h2>",
        _models(doc["models"]),
        "<h2>Quality</h2>",
        _quality(doc["quality"]),
        "<h2>Input drift</h2>",
        _drift(doc["drift"]),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>specialize monitor "
        f"{escape(doc['model'])}</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _num(value: Any, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _models(models: list[dict[str, Any]]) -> str:
    if not models:
        return "<p class='note'>No requests in the window.</p>"
    rows = [
        [
            f"<code>{escape(m['model'])}</code>",
            escape(", ".join(m["addressed_as"])),
            str(m["requests"]),
            _num(m["latency_ms"]["p50"], ".0f"),
            _num(m["latency_ms"]["p95"], ".0f"),
            str(m["server_errors"]),
            str(m["client_errors"]),
            str(m["cancelled"]),
            f"{m['ratings']['count']} (mean {_num(m['ratings']['mean'], '.2f')})",
            str(m["corrections"]),
            f"{m['judged_bad']} / {m['judged']}",
        ]
        for m in models
    ]
    header = [
        "model (run)",
        "addressed as",
        "requests",
        "latency p50 ms",
        "p95 ms",
        "server errors",
        "client errors",
        "cancelled",
        "ratings",
        "corrections",
        "judged bad",
    ]
    return _table(header, rows)


def _quality(quality: dict[str, Any]) -> str:
    rows = [
        [
            "bad share of judged answers",
            _num(quality["bad_share"], ".1%") + f" of {quality['judged']}",
            f"{quality['max_negative_share']:g}",
        ],
        [
            "server error rate",
            _num(quality["error_rate"], ".2%") + f" of {quality['requests']}",
            f"{quality['max_error_rate']:g}",
        ],
    ]
    note = f"<p class='note'>{escape(quality['note'])}</p>" if quality.get("note") else ""
    return _table(["check", "value", "limit"], rows) + note


def _drift(drift: dict[str, Any] | None) -> str:
    if drift is None:
        return (
            "<p class='note'>No run's training data to compare with (the base model, or an unknown id).</p>"
        )
    if not drift["tests"]:
        return f"<p class='note'>{escape(drift.get('note', 'not judged'))}</p>"
    rows = [
        [
            escape(t["name"]),
            f"{t['effect']:.4f}",
            f"{t['threshold']:g}",
            f"{t['p_value']:.4f}",
            "<span class='flag'>drifted</span>" if t["flagged"] else "<span class='ok'>no</span>",
        ]
        for t in drift["tests"]
    ]
    out = [
        f"<p>{drift['prompts']} prompts answered by the run, against its training data (task template of "
        f"{drift['template']['prefix_chars']} + {drift['template']['suffix_chars']} characters taken off).</p>",
        _table(["test", "effect", "threshold", "p-value", "flagged"], rows),
    ]
    if drift.get("labels_note"):
        out.append(f"<p class='note'>{escape(drift['labels_note'])}</p>")
    for t in drift["tests"]:
        details = t["details"]
        if t["name"] == "token_divergence" and details.get("over_represented"):
            out.append("<h3>Tokens more frequent in the traffic</h3>")
            out.append(
                _table(
                    ["token", "served share", "training share"],
                    [
                        [f"<code>{escape(r['token'])}</code>", f"{r['served']:.4f}", f"{r['training']:.4f}"]
                        for r in details["over_represented"]
                    ],
                )
            )
        elif t["name"] == "length_shift":
            out.append("<h3>Prompt lengths (tokens, template off)</h3>")
            out.append(
                _table(
                    ["", "median", "p95", "mean"],
                    [
                        [side, f"{s['median']:.0f}", f"{s['p95']:.0f}", f"{s['mean']:.1f}"]
                        for side, s in (("served", details["served"]), ("training", details["training"]))
                    ],
                )
            )
        elif t["name"] == "far_share":
            out.append(
                f"<h3>Far from every training example: {details['far_share']:.1%} (expected "
                f"{details['expected_share']:.1%})</h3>"
            )
            out.append(
                _table(
                    ["prompt", "nearest similarity"],
                    [[escape(r["prompt"]), f"{r['similarity']:.3f}"] for r in details["farthest"]],
                )
            )
        elif t["name"] == "label_shift":
            out.append(f"<h3>Answered labels ({details['no_label_share']:.1%} of answers name no label)</h3>")
            out.append(
                _table(
                    ["label", "served share", "training share"],
                    [
                        [escape(r["label"]), f"{r['served']:.3f}", f"{r['training']:.3f}"]
                        for r in details["largest_changes"]
                    ],
                )
            )
    return "".join(out)
