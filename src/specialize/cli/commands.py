"""The commands behind `specialize ...`: one library call each, and how its result is shown."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from specialize.evaluate.report import text_table as _table

if TYPE_CHECKING:
    from specialize.deploy.api_keys import ApiKeys
    from specialize.monitor.content import LogContent
    from specialize.pipeline import RunResult


def run(config_path: Path, overrides: list[str], progress: bool) -> int:
    from specialize.config import load_config
    from specialize.pipeline import run as run_pipeline

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = load_config(config_path, overrides)
    _print_comparison(run_pipeline(config, progress=progress))
    return 0


def _print_comparison(result: RunResult) -> None:
    _print_report(f"run {result.run_id}", result.eval.report_path, "validation examples")
    print(f"model card: {result.run_dir.model_card}")


def _print_report(title: str, report_path: Path, noun: str = "examples") -> None:
    """The system-by-metric table, the paired test and where the report is."""
    from specialize.evaluate.report import comparison_text, load_report

    report = load_report(report_path)
    print(f"\n{title}: {report['n_examples']} {noun}, {report['task']}")
    print(comparison_text(report))
    html = report_path.with_suffix(".html")
    print(f"report: {html if html.exists() else report_path}")


def tune(
    config_path: Path | None,
    overrides: list[str],
    *,
    budget: str | None,
    trials: int | None,
    storage: str | None,
    workers: int,
    resume: str | None,
    search_only: bool,
    eval_every: int | None,
    sample: int | None,
    sample_from: str,
    progress: bool,
) -> int:
    from specialize.config import load_config
    from specialize.errors import ConfigError
    from specialize.evaluate.report import comparison_text
    from specialize.search import trials_table
    from specialize.tuning import tune as tune_study

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for flag, value in (
        ("--trials", trials),
        ("--workers", workers),
        ("--eval-every", eval_every),
        ("--sample", sample),
    ):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value})")
    if resume is None and budget is None:
        raise ConfigError("specialize tune needs --budget, e.g. --budget 45m (the wall time of the search)")
    if resume is None and config_path is None:
        raise ConfigError("specialize tune needs a run YAML, or --resume STUDY to continue a study")
    if resume is not None and overrides:
        raise ConfigError(
            "--set does not apply with --resume: a study goes on with the config it started with"
        )
    if resume is not None and config_path is not None:
        print(f"note: --resume goes on with study {resume}'s own config; {config_path} is not read")
    config = load_config(config_path, overrides) if resume is None else None
    result = tune_study(
        config,
        parse_duration(budget) if budget else None,
        trials=trials,
        storage=storage,
        workers=workers,
        resume=resume,
        eval_every=eval_every,
        sample=sample,
        sample_from=sample_from,
        search_only=search_only,
        progress=progress,
    )
    print(f"\nstudy {result.study}: {len(result.search.trials)} trials, objective {result.search.metric}")
    print(_table(*trials_table(result.search)))
    if result.best_config is None or result.tuned is None or result.default is None:
        return 0
    print(f"\nbest config: {result.best_config}")
    for title, run_result in (("tuned config", result.tuned), ("default config", result.default)):
        report = json.loads(run_result.eval.report_path.read_text(encoding="utf-8"))
        print(f"\n{title}, run {run_result.run_id}: {report['n_examples']} validation examples")
        print(comparison_text(report))
    if result.verdict:
        print("\nverdict:")
        for line in result.verdict["lines"]:
            print(f"- {line}")
    print("\nlearning curve (fine-tuned, validation):")
    print(
        _table(
            ["share", "training examples", result.search.metric, "95% CI"],
            [
                [f"{p.fraction:.0%}", str(p.train_examples), f"{p.value:.4f}", f"{p.low:.3f}-{p.high:.3f}"]
                for p in result.curve
            ],
        )
    )
    print(f"report: {result.report}")
    return 0


def parse_duration(text: str) -> float:
    """Seconds in a duration such as 45m, 1h30m, 90s or 1.5h."""
    import re

    from specialize.errors import ConfigError

    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?[hms]\s*)+)", text)
    if not parts:
        raise ConfigError(f"--budget {text!r}: give a duration with a unit, e.g. 45m, 1h30m or 600s")
    scale = {"h": 3600, "m": 60, "s": 1}
    seconds = sum(float(n) * scale[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", parts.group(1)))
    if seconds <= 0:
        raise ConfigError(f"--budget {text!r}: the budget must be more than zero")
    return seconds


def follow() -> int:
    """Rank 1 and up of a multi-process `run` or `train --resume`: train what rank 0 hands over; rank 0 prints."""
    import logging

    from specialize.pipeline import follow as follow_rank_zero

    logging.getLogger("specialize").setLevel(logging.WARNING)  # rank 0 logs the run once
    follow_rank_zero()
    return 0


def train_resume(run_ref: str, registry_url: str | None, progress: bool) -> int:
    from specialize.pipeline import resume

    result = resume(run_ref, registry_url, progress=progress)
    _print_comparison(result)
    return 0


def eval_run(run_ref: str, data: Path, registry_url: str | None, progress: bool) -> int:
    from specialize.pipeline import evaluate_run

    _print_report(str(data), evaluate_run(run_ref, data, registry_url, progress=progress).report_path)
    return 0


def export(
    run_ref: str, fmt: str, out: Path, registry_url: str | None, force: bool, dtype: str | None
) -> int:
    from specialize.deploy import export_run

    print(export_run(run_ref, fmt, out, registry_url, force=force, dtype=dtype))
    return 0


def compare(run_refs: list[str], registry_url: str | None, output: str) -> int:
    from specialize.evaluate.report import system_name
    from specialize.pipeline import compare_runs

    rows = compare_runs(run_refs, registry_url)
    if output == "json":
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    systems = list(dict.fromkeys(s for row in rows for s in row["systems"]))
    header = ["run", "base model", "method", "train examples", "metric"]
    flat = []
    for row in rows:
        test = row["fine_tuned_vs_best"]
        values = {s: row["systems"].get(s) for s in systems}
        if output == "csv":
            cells = [
                f"{v[key]:.4f}" if v else "" for v in values.values() for key in ("value", "low", "high")
            ]
            tested = (
                [test["against"], f"{test['difference']:.4f}", f"{test['p_value']:.4f}"]
                if test
                else ["", "", ""]
            )
        else:
            cells = [
                f"{v['value']:.3f} ({v['low']:.3f}-{v['high']:.3f})" if v else "-" for v in values.values()
            ]
            tested = [
                f"{test['difference']:+.3f} vs {system_name(test['against'])} (p={test['p_value']:.3f})"
                if test
                else "-"
            ]
        size = "" if row["train_examples"] is None else str(row["train_examples"])
        overfit = {True: "yes", False: "no", None: ""}[row["overfitting"]]
        flat.append(
            [row["run"], row["base_model"], row["method"], size, row["headline"], *cells, *tested, overfit]
        )
    if output == "csv":
        import csv
        import sys

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(
            [h.replace(" ", "_") for h in header]
            + [f"{s}_{key}" for s in systems for key in ("value", "low", "high")]
            + ["best_alternative", "fine_tuned_difference", "p_value", "overfitting"]
        )
        writer.writerows(flat)
        return 0
    print(
        _table(
            [
                *header,
                *(f"{system_name(s)} (95% CI)" for s in systems),
                "fine-tuned vs best alternative",
                "overfitting",
            ],
            flat,
        )
    )
    for row in rows:
        if row.get("note"):
            print(f"note: {row['run']}: {row['note']}")
    return 0


def parity(run_ref: str, reference: Path, registry_url: str | None, as_json: bool) -> int:
    from specialize.evaluate.parity import compare_parity

    report = compare_parity(run_ref, reference, registry_url)
    if as_json:
        doc = {
            "run": report.run_id,
            "reference": str(report.reference),
            "task": report.task,
            "n_examples": report.n_examples,
            "metrics": report.metrics,
            "held_out": report.held_out,
            "report": str(report.report_path),
        }
        print(json.dumps(doc, indent=2))
        return 0
    names = list(report.metrics) + [m for m in report.held_out if m not in report.metrics]
    rows = [
        [
            name,
            f"{report.metrics[name]:.3f}" if name in report.metrics else "-",
            f"{report.held_out[name]:.3f}" if name in report.held_out else "-",
        ]
        for name in names
    ]
    print(
        f"\nparity of run {report.run_id} with {report.reference}: {report.n_examples} recorded exchanges, {report.task}"
    )
    print(_table(["metric", "vs recorded answers", "held-out evaluation"], rows))
    if "label_accuracy" in report.metrics and "accuracy" in report.held_out:
        print(
            "label_accuracy compares with the recorded labels; accuracy, with the gold labels of the validation split"
        )
    print(f"answers: {report.report_path}")
    return 0


def models_list() -> int:
    from specialize.models import list_models

    rows = [
        [
            i.entry.name,
            f"{i.entry.parameters / 1e6:,.0f} M",
            f"{i.entry.context_length:,}",
            i.entry.licence,
            "yes" if i.cached else "no",
            "PyPI (embedded)" if i.entry.source.startswith("pypi:") else "model hub",
        ]
        for i in list_models()
    ]
    print(_table(["name", "parameters", "context", "licence", "cached", "source"], rows))
    return 0


def models_pull(name: str) -> int:
    from specialize.models import pull_model

    print(pull_model(name))
    return 0


def runs(registry_url: str | None) -> int:
    from specialize.config import DEFAULT_REGISTRY
    from specialize.runs import Registry

    registry = Registry(registry_url or DEFAULT_REGISTRY)
    rows = [
        [r["id"], r["status"], r["base_model"], r["created_at"].strftime("%Y-%m-%d %H:%M")]
        for r in registry.list_runs()
    ]
    print(_table(["run", "status", "base model", "created (UTC)"], rows) if rows else "no runs yet")
    return 0


def data_check(
    path: Path, validation: Path | None, base_model: str | None, overrides: list[str], as_json: bool
) -> int:
    from specialize.data import check_data

    result = check_data(path, validation=validation, base_model=base_model, overrides=overrides)
    if as_json:
        print(json.dumps({**result.audit, "problems": result.problems}, indent=2, ensure_ascii=False))
    else:
        print(_render_audit(result.audit))
        for problem in result.problems[:50]:
            print(f"error: {problem}")
        if len(result.problems) > 50:
            print(f"error: ... and {len(result.problems) - 50} more")
    return 3 if result.problems else 0


def data_prepare(config_path: Path, overrides: list[str], out: Path | None) -> int:
    from specialize.config import load_config
    from specialize.data.audit import left_out
    from specialize.pipeline import prepare_run

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data, run_id = prepare_run(load_config(config_path, overrides), out)
    audit = json.loads(data.audit_path.read_text(encoding="utf-8"))
    print(_render_audit(audit))
    where = f"run {run_id}: " if run_id else ""
    rejected, not_sampled = left_out(audit["rejected_by_kind"])
    print(
        f"\n{where}{data.n_train} training, {data.n_validation} validation, {rejected} rejected, {not_sampled} not "
        f"sampled rows in {data.directory}"
    )
    return 0


def _render_audit(audit: dict[str, Any]) -> str:
    """The audit as a person reads it; `--json` gives the whole of it."""
    from specialize.data.audit import left_out

    counts, tokens = audit["counts"], audit["tokens"]
    lines = []
    for split, info in audit["files"].items():
        if info:
            lines.append(
                f"{split}: {info['path']} ({info.get('format')}, {info['examples']} valid rows"
                + (f", {info['invalid_rows']} invalid" if info.get("invalid_rows") else "")
                + ")"
            )
            notes = info.get("notes")
            if notes:
                lines.append(
                    f"  note: {notes['count']} row(s) read with an adjustment, e.g. {notes['first'][0]}"
                )
    rejected, not_sampled = left_out(audit["rejected_by_kind"])
    lines.append(
        f"task: {audit['task']}; after cleaning {counts['train']} train, {counts['validation']} validation,"
        f" {rejected} rejected, {not_sampled} not sampled ({audit['split']['method'] if audit['split'] else '-'})"
    )
    if audit["rejected_by_kind"]:
        lines.append(
            "rejected: " + ", ".join(f"{k} {n}" for k, n in sorted(audit["rejected_by_kind"].items()))
        )
    for split in ("train", "validation"):
        stats = tokens[split]
        if stats:
            lines.append(
                f"tokens ({split}): min {stats['min']}, median {stats['median']:g}, p95 {stats['p95']}, "
                f"max {stats['max']}, total {stats['total']:,}"
            )
    lines.append(f"tokens counted with: {tokens['counted_with']}")
    if "labels" in audit:
        rows = [
            [label, str(c["train"]), str(c["validation"])]
            for label, c in sorted(audit["labels"].items(), key=lambda kv: -kv[1]["train"])
        ]
        lines += ["", _table(["label", "train", "validation"], rows)]
        if "imbalance_ratio" in audit:  # none when no training example has a label (an empty train file)
            lines.append(f"imbalance ratio (largest/smallest class in train): {audit['imbalance_ratio']}")
    dup, leak = audit["duplicates"], audit["leakage"]
    lines.append(
        f"\nduplicates removed: {dup['exact']} exact, {dup['near']} near; leakage removed from train: "
        f"{leak['exact']} exact, {leak['near']} near, {leak['group']} by group"
    )
    if audit["conflicts"]:
        lines.append(f"inputs with conflicting labels: {audit['conflicts']['count']}")
    pii = audit["pii"]
    found = ", ".join(f"{k} {n}" for k, n in pii["by_kind"].items()) or "none"
    lines.append(f"personal data ({pii['mode']}): {found} in {pii['rows']} row(s)")
    if audit["bias"]:
        gap = audit["bias"].get("max_gap")
        lines.append(
            f"bias probe by {audit['bias']['by']}: {len(audit['bias']['groups'])} groups"
            + (
                f", largest gap {gap['gap']:.0%} for '{gap['label']}' ({gap['highest']} vs {gap['lowest']})"
                if gap
                else ""
            )
        )
    est = audit["estimate"]
    if est.get("seconds_per_epoch") is not None:
        lines.append(
            f"training estimate: {est['tokens_per_epoch']:,} tokens per epoch, about {est['time_per_epoch']}"
            f" at {est['tokens_per_second']:g} tokens/s on {est['model']} ({est['basis']})"
        )
    lines += [f"warning: {w}" for w in audit["warnings"]]
    return "\n".join(lines)


def serve(
    *,
    base_model: str | None,
    runs: list[str],
    host: str,
    port: int,
    registry: str | None,
    auth: bool,
    max_batch: int,
    max_adapters: int,
    max_tokens: int,
    runs_dir: str | None,
    fine_tune_config: str | None,
    max_upload_mb: int,
    max_body_bytes: int,
    log_content: str,
) -> int:
    from specialize.config import DEFAULT_REGISTRY
    from specialize.serve import ServeOptions
    from specialize.serve import serve as run_server

    run_server(
        ServeOptions(
            base_model=base_model,
            runs=tuple(runs),
            host=host,
            port=port,
            registry=registry or DEFAULT_REGISTRY,
            auth=auth,
            max_batch=max_batch,
            max_adapters=max_adapters,
            max_tokens=max_tokens,
            runs_dir=runs_dir,
            fine_tune_config=fine_tune_config,
            max_upload_mb=max_upload_mb,
            max_body_bytes=max_body_bytes,
            log_content=cast("LogContent", log_content),
        )
    )
    return 0


def keys_create(name: str, registry_url: str | None, admin: bool = False) -> int:
    key, secret = _key_store(registry_url).create(name, admin=admin)
    kind = "admin key" if key.admin else "key"
    print(f"created {kind} {key.id} ({key.name}); the secret is shown once, keep it safe:\n{secret}")
    return 0


def keys_revoke(key_id: str, registry_url: str | None) -> int:
    key = _key_store(registry_url).revoke(key_id)
    print(f"revoked {key.id} ({key.name})")
    return 0


def keys_list(registry_url: str | None) -> int:
    rows = [
        [
            k.id,
            k.name,
            k.shown_prefix + "...",
            f"{k.created_at:%Y-%m-%d %H:%M}",
            "active" if k.active else f"revoked {k.revoked_at:%Y-%m-%d %H:%M}",
            "admin" if k.admin else "",
        ]
        for k in _key_store(registry_url).list()
    ]
    print(_table(["id", "name", "key", "created", "state", "role"], rows) if rows else "no API keys")
    return 0


def _key_store(registry_url: str | None) -> ApiKeys:
    from specialize.config import DEFAULT_REGISTRY
    from specialize.runs import Registry
    from specialize.serve.api_keys import ApiKeys

    return ApiKeys(Registry(registry_url or DEFAULT_REGISTRY))


def monitor(model: str, since: str | None, out: Path | None, registry_url: str | None, as_json: bool) -> int:
    from specialize.config import DEFAULT_REGISTRY, window_start
    from specialize.errors import ConfigError
    from specialize.monitor import monitor_config_of, monitor_model
    from specialize.runs import Registry

    registry = Registry(registry_url or DEFAULT_REGISTRY)
    config = monitor_config_of(registry, model)
    try:
        start = window_start(since or config.since)
    except ValueError as exc:
        raise ConfigError(f"--since: {exc}") from None
    report = monitor_model(registry, model, config, start, out_dir=out)
    if as_json:
        print(json.dumps(report.doc, indent=2, ensure_ascii=False))
        return 3 if report.flagged else 0
    doc = report.doc
    print(f"{model}: run {doc['run'] or '-'}, {doc['window']['since']} to {doc['window']['until']} (UTC)")
    rows = [
        [
            m["model"],
            str(m["requests"]),
            "-" if m["latency_ms"]["p50"] is None else f"{m['latency_ms']['p50']:.0f}",
            "-" if m["latency_ms"]["p95"] is None else f"{m['latency_ms']['p95']:.0f}",
            str(m["server_errors"]),
            str(m["ratings"]["count"]),
            str(m["corrections"]),
            f"{m['judged_bad']}/{m['judged']}",
        ]
        for m in doc["models"]
    ]
    header = ["model", "requests", "p50 ms", "p95 ms", "errors", "ratings", "corrections", "judged bad"]
    if rows:
        print(_table(header, rows))
    elif doc["run"] is None and "@" not in model:
        print(
            f"no requests for {model} in the window; a run name is watched as NAME@alias, e.g. {model}@production"
        )
    else:
        print("no requests in the window")
    drift = doc["drift"]
    if drift and drift["tests"]:
        print(f"\ninput drift ({drift['prompts']} prompts against the run's training data):")
        tests = [
            [
                t["name"],
                f"{t['effect']:.4f}",
                f"{t['threshold']:g}",
                f"{t['p_value']:.4f}",
                "DRIFT" if t["flagged"] else "no",
            ]
            for t in drift["tests"]
        ]
        print(_table(["test", "effect", "threshold", "p-value", "flagged"], tests))
        if drift.get("labels_note"):
            print(f"label shift: {drift['labels_note']}")
    elif drift:
        print(f"\ninput drift: {drift.get('note', 'not judged')}")
    if doc["quality"].get("note"):
        print(f"quality: {doc['quality']['note']}")
    for reason in report.reasons:
        print(f"flagged: {reason}")
    print(f"report: {report.html_path}")
    return 3 if report.flagged else 0


def retrain(
    model: str,
    feedback: bool,
    data: list[Path],
    golden: Path | None,
    registry_url: str | None,
    as_json: bool,
    progress: bool,
) -> int:
    from specialize.errors import ConfigError
    from specialize.retraining import describe
    from specialize.retraining import retrain as retrain_model

    if not feedback and not data:
        raise ConfigError("retrain: nothing to learn from; give --feedback, --data NEW.jsonl, or both")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = retrain_model(
        model, registry_url, feedback=feedback, data=data, golden=golden, progress=progress
    )
    if as_json:
        print(json.dumps(describe(result), indent=2, ensure_ascii=False))
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in result.inputs.counts.items())
    made = "already trained on these inputs" if result.reused else "trained"
    print(f"child {result.child} of {result.parent} ({made}); candidate alias set\ninputs: {counts}")
    print(f"gate: {result.decision.summary()}")
    return 0


def promote(run_ref: str, alias: str, registry_url: str | None, force: bool) -> int:
    from specialize.retraining import promote as promote_run

    name, previous, run_id = promote_run(run_ref, alias, registry_url, force)
    print(f"{name}: {previous or '(new)'} -> {run_id}")
    return 0


def rollback(ref: str, registry_url: str | None) -> int:
    from specialize.retraining import rollback as rollback_alias

    alias, before, now = rollback_alias(ref, registry_url)
    print(f"{alias}: {before} -> {now}")
    return 0


def aliases(name: str | None, history: bool, registry_url: str | None) -> int:
    from specialize.config import DEFAULT_REGISTRY
    from specialize.runs import Registry

    registry = Registry(registry_url or DEFAULT_REGISTRY)
    if history:
        rows = [
            [
                f"{h['created_at']:%Y-%m-%d %H:%M:%S}",
                f"{h['name']}@{h['alias']}",
                h["action"],
                h["previous_run"] or "-",
                h["run_id"],
                h["note"] or "",
            ]
            for h in registry.alias_history_of(name)
        ]
        header = ["when (UTC)", "alias", "action", "from", "to", "note"]
    else:
        rows = [
            [f"{a['name']}@{a['alias']}", a["run_id"], f"{a['updated_at']:%Y-%m-%d %H:%M:%S}"]
            for a in registry.list_aliases(name)
        ]
        header = ["alias", "run", "since (UTC)"]
    print(
        _table(header, rows)
        if rows
        else "no aliases yet; `specialize promote RUN --alias production` makes one"
    )
    return 0


def loop(config_path: Path, overrides: list[str], as_json: bool, progress: bool) -> int:
    from specialize.config import load_config
    from specialize.retraining import describe
    from specialize.retraining import loop as run_loop

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run_loop(load_config(config_path, overrides), progress=progress)
    if as_json:
        doc = {
            "model": result.model,
            "locked_by": result.locked_by,
            "flagged": result.report.flagged if result.report else None,
            "report": str(result.report.json_path) if result.report else None,
            "retrained": describe(result.retrained) if result.retrained else None,
            "promoted": result.promoted,
            "notes": result.notes,
            "exit_code": result.exit_code,
        }
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        return result.exit_code
    if result.locked_by is not None:
        print(f"{result.model}: another loop holds the lock ({result.locked_by}); nothing done")
        return 0
    if result.report is not None:
        print(f"{result.model}: monitor report {result.report.html_path}")
    for note in result.notes:
        print(f"  {note}")
    if result.retrained is not None:
        r = result.retrained
        made = "reused (same inputs)" if r.reused else "trained"
        print(f"child {r.child} of {r.parent}: {made}\ngate: {r.decision.summary()}")
        print(f"{result.model} -> {r.child}" if result.promoted else f"{result.model} stays on {r.parent}")
    return result.exit_code
