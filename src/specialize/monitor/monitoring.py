"""`specialize monitor MODEL`: how a served model is doing, and whether its inputs have drifted from its training.

Reads the request log and feedback (`traffic.py`), the alias history, and the prepared data of the run that
answers (`data/train.jsonl`, `validation.jsonl`); writes `monitor/<UTC time>/report.json` and `report.html` into
that run's directory (or `out_dir`).

Per model (each run that answered, and the base model): requests, latency p50/p95, errors, ratings, corrections.
For the run that answers now: the drift tests of `drift.py` over the prompts it answered in the window, and the
quality checks: the share of judged answers that feedback calls bad, and the server error rate. The report is
`flagged` when a drift test or a quality check crosses its threshold; the CLI then exits with status 3.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from specialize.config import DriftConfig, MonitorConfig, QualityConfig
from specialize.monitor.drift import (
    DriftTest,
    far_share,
    find_template,
    label_shift,
    length_shift,
    token_divergence,
)
from specialize.monitor.traffic import Exchange, judge, read_exchanges, uses_stars
from specialize.runs import Registry, RunDir, now, resolve_alias, write_atomic

log = logging.getLogger(__name__)

REPORT_SCHEMA = 1


@dataclass(frozen=True)
class MonitorReport:
    """What `monitor_model` found, and where it wrote it."""

    model: str
    run_id: str | None
    flagged: bool
    reasons: list[str]
    json_path: Path
    html_path: Path
    doc: dict[str, Any]


def monitor_model(
    registry: Registry,
    model: str,
    config: MonitorConfig,
    since: datetime,
    until: datetime | None = None,
    out_dir: Path | None = None,
    seed: int = 0,
) -> MonitorReport:
    """Traffic, quality and input drift of `model` over [since, until).

    Args:
        registry: the registry the server logs to.
        model: `NAME@alias`, a run id, or any model id the server answered for (the base model: no drift).
        config: the `monitor:` section (its `drift` and `quality` thresholds are used here).
        since: start of the window (UTC, naive as the registry stores times).
        until: end of the window, default now.
        out_dir: where to write report.json and report.html; default the answering run's `monitor/<time>/`.
        seed: seeds the permutations and samples of the tests.

    Raises:
        NotFoundError: `NAME@alias` names no alias, or a run id no run.
    """
    until = until or now()
    run_id = resolve_alias(registry, model) if "@" in model else None
    name = None
    runs = {r["id"]: r for r in registry.list_runs()}
    if run_id is None and model in runs:
        run_id, name = model, runs[model]["name"]
    exchanges = read_exchanges(registry, {model}, since, until, name=name)
    if name is not None:  # a run id: the requests that run answered, however they were addressed
        exchanges = [e for e in exchanges if e.run_id == run_id]
    answered = [e for e in exchanges if run_id is not None and e.run_id == run_id]
    doc: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "model": model,
        "run": run_id,
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "created_at": now().isoformat(),
        "models": [_usage(key, group) for key, group in _by_model(exchanges).items()],
        "quality": _quality(config.quality, answered if run_id else exchanges),
        "drift": None,
    }
    reasons = [f"quality: {reason}" for reason in doc["quality"]["reasons"]]
    run_dir = RunDir(Path(runs[run_id]["run_dir"])) if run_id in runs else None
    if run_dir is not None:
        doc["drift"] = _drift(config.drift, run_dir, runs[run_id]["base_model"], answered, seed)
        reasons += [
            f"drift: {t['name']} {t['effect']:.3f} >= {t['threshold']:g} (p={t['p_value']:.4f})"
            for t in doc["drift"]["tests"]
            if t["flagged"]
        ]
    doc["flagged"], doc["reasons"] = bool(reasons), reasons
    if out_dir is None:
        base = run_dir.root if run_dir is not None else Path("monitor")
        out_dir = base / "monitor" / until.strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    write_atomic(json_path, json.dumps(doc, indent=2, ensure_ascii=False))
    from specialize.monitor.html import render_html

    write_atomic(html_path, render_html(doc))
    return MonitorReport(model, run_id, bool(reasons), reasons, json_path, html_path, doc)


def monitor_config_of(registry: Registry, model: str) -> MonitorConfig:
    """The `monitor:` section of the run `model` names (`NAME@alias` or a run id); the defaults for another id."""
    from specialize.config import load_resolved

    runs = {r["id"]: r for r in registry.list_runs()}
    run_id = resolve_alias(registry, model)
    if run_id not in runs:
        return MonitorConfig()
    return load_resolved(Path(runs[run_id]["run_dir"]) / "config.resolved.yaml").monitor


def _by_model(exchanges: list[Exchange]) -> dict[str, list[Exchange]]:
    groups: dict[str, list[Exchange]] = {}
    for e in exchanges:
        groups.setdefault(e.run_id or e.model, []).append(e)
    return groups


def _usage(key: str, exchanges: list[Exchange]) -> dict[str, Any]:
    """Traffic, latency, errors and feedback of one model's requests."""
    codes = [e.status_code for e in exchanges]
    latency = np.asarray([e.latency_ms for e in exchanges if e.status_code == 200], dtype=float)
    stars = uses_stars(exchanges)
    ratings = [fb.rating for e in exchanges for fb in e.feedback if fb.rating is not None]
    verdicts = [judge(e.feedback, stars, e.answer) for e in exchanges]
    return {
        "model": key,
        "addressed_as": sorted({e.model for e in exchanges}),
        "requests": len(exchanges),
        "answered": codes.count(200),
        "server_errors": sum(c >= 500 for c in codes),
        "client_errors": sum(400 <= c < 500 and c != 499 for c in codes),
        "cancelled": codes.count(499),
        "latency_ms": {
            "p50": float(np.percentile(latency, 50)) if len(latency) else None,
            "p95": float(np.percentile(latency, 95)) if len(latency) else None,
        },
        "prompt_tokens": sum(e.prompt_tokens for e in exchanges),
        "completion_tokens": sum(e.completion_tokens for e in exchanges),
        "ratings": {
            "count": len(ratings),
            "mean": float(np.mean(ratings)) if ratings else None,
            "scale": "1-5 stars" if stars else "-1/1 thumbs",
        },
        "corrections": sum(1 for e in exchanges if any(fb.correction for fb in e.feedback)),
        "judged": sum(v is not None for v in verdicts),
        "judged_bad": sum(v is True for v in verdicts),
        "first": min(e.started_at for e in exchanges).isoformat() if exchanges else None,
        "last": max(e.started_at for e in exchanges).isoformat() if exchanges else None,
    }


def _quality(config: QualityConfig, exchanges: list[Exchange]) -> dict[str, Any]:
    """The share of judged answers feedback calls bad, and the server error rate, against their limits."""
    stars = uses_stars(exchanges)
    verdicts = [v for v in (judge(e.feedback, stars, e.answer) for e in exchanges) if v is not None]
    errors = sum(e.status_code >= 500 for e in exchanges)
    out: dict[str, Any] = {
        "judged": len(verdicts),
        "bad_share": sum(verdicts) / len(verdicts) if verdicts else None,
        "max_negative_share": config.max_negative_share,
        "requests": len(exchanges),
        "error_rate": errors / len(exchanges) if exchanges else None,
        "max_error_rate": config.max_error_rate,
        "reasons": [],
    }
    if len(verdicts) >= config.min_feedback and out["bad_share"] > config.max_negative_share:
        out["reasons"].append(
            f"{out['bad_share']:.0%} of {len(verdicts)} judged answers were rated bad or corrected "
            f"(quality.max_negative_share {config.max_negative_share:g})"
        )
    elif len(verdicts) < config.min_feedback:
        out["note"] = (
            f"{len(verdicts)} judged answers, fewer than quality.min_feedback ({config.min_feedback})"
        )
    if exchanges and out["error_rate"] > config.max_error_rate:
        out["reasons"].append(
            f"{out['error_rate']:.1%} of {len(exchanges)} requests failed with a server error "
            f"(quality.max_error_rate {config.max_error_rate:g})"
        )
    return out


def _drift(
    config: DriftConfig, run_dir: RunDir, base_model: str, answered: list[Exchange], seed: int
) -> dict[str, Any]:
    """The drift tests over the prompts the run answered, against its prepared training data."""
    from specialize.data import PreparedData, read_prepared

    prompts = [e.prompt_text for e in answered if e.status_code == 200 and e.prompt_text is not None]
    out: dict[str, Any] = {"prompts": len(prompts), "tests": []}
    if len(prompts) < config.min_requests:
        without = sum(e.prompt_text is None for e in answered)
        out["note"] = (
            f"{len(prompts)} logged prompts, fewer than drift.min_requests ({config.min_requests}): not judged"
            + (f"; {without} requests were logged without text (--log-content none)" if without else "")
        )
        return out
    train_rows = read_prepared(run_dir.data / "train.jsonl")
    held_rows = read_prepared(run_dir.data / "validation.jsonl")
    rng = np.random.default_rng(seed)
    if len(train_rows) > 3000:
        train_rows = [train_rows[i] for i in sorted(rng.permutation(len(train_rows))[:3000])]
    training = [_user_text(r) for r in train_rows]
    held_out = [_user_text(r) for r in held_rows]
    template = find_template(training)
    training_body = [template.cut(t) for t in training]
    served_body = [template.cut(p) for p in prompts]
    tokenizer = _tokenizer(base_model)

    def ids(texts: list[str]) -> list[list[int]]:
        return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    served_ids, training_ids = ids(served_body), ids(training_body)
    tests: list[DriftTest] = [
        token_divergence(config, served_ids, training_ids, seed, decode=lambda t: tokenizer.decode([t])),
        length_shift(config, [len(x) for x in served_ids], [len(x) for x in training_ids]),
        far_share(config, served_body, training_body, [template.cut(t) for t in held_out], seed),
    ]
    labels = PreparedData.load(run_dir.data).labels
    answers = [e.answer for e in answered if e.status_code == 200 and e.answer is not None]
    if labels:
        train_labels = [str(r["label"]) for r in train_rows if r.get("label") is not None]
        shifted = label_shift(config, answers, train_labels, seed)
        if shifted is None:
            out["labels_note"] = (
                f"fewer than drift.min_requests ({config.min_requests}) of {len(answers)} answers name a label: "
                "label shift not judged"
            )
        else:
            tests.append(shifted)
    out["template"] = {"prefix_chars": len(template.prefix), "suffix_chars": len(template.suffix)}
    out["tests"] = [t.to_json() for t in tests]
    return out


def _user_text(row: dict[str, Any]) -> str:
    """A prepared row's input as traffic's is read: its user turns, joined (plain text rows: the text)."""
    if "messages" not in row:
        return str(row.get("text", ""))
    messages = row["messages"][:-1] if row["messages"][-1]["role"] == "assistant" else row["messages"]
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def _tokenizer(base_model: str) -> Any:
    from transformers import AutoTokenizer

    from specialize.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(base_model))
