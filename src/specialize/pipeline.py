"""`specialize run`: every stage of one run, in order, ending in the comparison.

Inputs are checked before anything is written: the config, the base model name or path, and every line of the
data files. The run directory is built under a hidden `.partial` name until its data stage has succeeded, and only
then renamed and entered in the registry, so a user mistake leaves neither a half-written run nor a registry row.
A failure after that (a diverging loss, a crash) marks the run `failed` in the registry and keeps its directory
for diagnosis.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.config import RunConfig
from specialize.data import PreparedData, prepare_run, read_chat_jsonl
from specialize.data.audit import left_out
from specialize.errors import DataError, RunNotFoundError
from specialize.evaluate import EvalReport, evaluate
from specialize.evaluate.report import load_report, recorded_scoring, write_html_report
from specialize.models import resolve_model
from specialize.runs import Registry, RunDir, open_run, write_atomic
from specialize.train import RESULT_FILE, TrainResult, train
from specialize.train.checkpoint import latest as latest_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What a complete run produced."""

    run_id: str
    run_dir: RunDir
    data: PreparedData
    train: TrainResult
    eval: EvalReport


def run(config: RunConfig, progress: bool = True) -> RunResult:
    """Prepare data, fine-tune, evaluate against the base model, and report.

    Args:
        config: a validated run config (see `specialize.config.load_config`).
        progress: show progress bars.

    Returns:
        The run's id, directory, and the result of each stage.
    """
    data, run_id = prepare_run(config)
    assert run_id is not None  # prepare_run creates a run when given no out_dir
    registry = Registry(config.registry_url)
    registry.set_status(run_id, "running")
    run_dir = RunDir(config.runs_dir / run_id)
    rejected, not_sampled = left_out(
        json.loads(data.audit_path.read_text(encoding="utf-8"))["rejected_by_kind"]
    )
    log.info(
        "run %s: %d training, %d validation examples, %d rejected, %d not sampled",
        run_id,
        data.n_train,
        data.n_validation,
        rejected,
        not_sampled,
    )
    model_path = resolve_model(config.base_model)
    return _train_and_evaluate(config, run_dir, data, model_path, registry, progress, resume=False)


def resume(run: str, registry_url: str | None = None, progress: bool = True) -> RunResult:
    """Continue a run that stopped (crash, kill, interrupt) from its last checkpoint, skipping finished stages.

    Args:
        run: a run id in the registry, or the path of a run directory.
        registry_url: the registry holding the run (default: the one named in the run's config).
        progress: show progress bars.
    """
    run_dir, config, registry = open_run(run, registry_url)
    registry.set_status(run_dir.id, "running")
    model_path = resolve_model(config.base_model)
    data = PreparedData.load(run_dir.data)
    if not (run_dir.train / RESULT_FILE).exists():
        last = latest_checkpoint(run_dir.train / "checkpoints")
        registry.delete_metrics_after(run_dir.id, "train", int(last.name.split("-")[-1]) if last else 0)
    return _train_and_evaluate(config, run_dir, data, model_path, registry, progress, resume=True)


def evaluate_run(
    run: str, data_file: Path, registry_url: str | None = None, progress: bool = True
) -> EvalReport:
    """Evaluate a finished run on any chat JSONL file (a new test set, say) and record it in the registry.

    Every configured system answers the file's examples; the result goes to `eval/<file stem>/report.json` and to
    the registry as stage `eval:<file stem>`, next to the run's own validation results.

    Args:
        run: a run id in the registry, or the path of a run directory.
        data_file: the examples, as chat JSONL (with a label field for classification).
        registry_url: the registry holding the run (default: the one named in the run's config).
        progress: show progress bars.
    """
    run_dir, config, registry = open_run(run, registry_url)
    finished = run_dir.train / RESULT_FILE
    if not data_file.is_file():
        raise DataError(
            f"--data {data_file}: no such file; give the path of a chat JSONL file to evaluate on"
        )
    if not finished.exists():
        raise RunNotFoundError(
            f"run {run_dir.id} has no trained model yet; finish it with `specialize train --resume {run_dir.id}`"
        )
    trained = TrainResult.load(finished)
    examples = read_chat_jsonl(data_file, config.data.label_field)
    out_dir = run_dir.eval / data_file.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    examples_file = out_dir / "examples.jsonl"
    write_atomic(examples_file, "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples))
    stage = f"eval:{data_file.stem}"
    report = evaluate(
        config.eval,
        resolve_model(config.base_model),
        trained.output_dir,
        run_dir.data / "train.jsonl",
        examples_file,
        out_dir,
        PreparedData.load(run_dir.data).labels,
        config.seed,
        on_metrics=lambda system, values: registry.log_metrics(run_dir.id, stage, values, system=system),
        progress=progress,
        train_dir=run_dir.train,
        # `best` scoring was chosen on the validation split; a test file is scored the same way, not re-chosen
        scoring_choice=recorded_scoring(run_dir.eval / "report.json")
        if config.eval.scoring == "best"
        else None,
    )
    registry.add_artifact(run_dir.id, stage, report.report_path)
    return report


def compare_runs(runs: list[str], registry_url: str | None = None) -> list[dict[str, Any]]:
    """One row per run: what was fine-tuned on what, and each system's headline metric with its 95% interval.

    Read from each run's `eval/report.json` and the registry; nothing is recomputed, except that a report of an
    older schema is re-rendered under today's definitions and says so in `note`.

    Args:
        runs: run ids in the registry, or paths of run directories.
        registry_url: the registry holding the runs (default: the one named in each run's config).

    Returns:
        Per run: run, base_model, method, train_examples, task, headline, systems ({system: value, low, high}),
        fine_tuned_vs_best (the paired test, or None), overfitting (flagged or not, None if unknown) and note
        (how an older report was read, or None).

    Raises:
        RunNotFoundError: a run is not in the registry, or has not been evaluated.
    """
    rows = []
    for ref in runs:
        run_dir, config, registry = open_run(ref, registry_url)
        path = run_dir.eval / "report.json"
        if not path.exists():
            raise RunNotFoundError(
                f"run {run_dir.id} has not been evaluated yet; finish it with `specialize train --resume {run_dir.id}`"
            )
        report = load_report(path)  # an older schema re-rendered, with a note
        significance = report["significance"]
        data = {m["name"]: m["value"] for m in registry.get_metrics(run_dir.id, "data")}
        t = config.train
        method = f"{t.method}, {t.adapter} rank {t.lora.rank}" if t.adapter else f"{t.method}, full"
        rows.append(
            {
                "run": run_dir.id,
                "base_model": config.base_model,
                "method": method,
                "train_examples": int(data["train_examples"]) if "train_examples" in data else None,
                "task": report["task"],
                "headline": report["headline"],
                "systems": {
                    system: {
                        "value": metrics[report["headline"]],
                        "low": significance["intervals"][system][0],
                        "high": significance["intervals"][system][1],
                    }
                    for system, metrics in report["systems"].items()
                },
                "fine_tuned_vs_best": significance.get("paired_test"),
                "overfitting": (report.get("overfitting") or {}).get("flagged"),
                "note": report.get("note"),
            }
        )
    return rows


def _train_and_evaluate(
    config: RunConfig,
    run_dir: RunDir,
    data: PreparedData,
    model_path: Path,
    registry: Registry,
    progress: bool,
    resume: bool,
) -> RunResult:
    run_id = run_dir.id
    finished = run_dir.train / RESULT_FILE
    try:
        if resume and finished.exists():
            trained = TrainResult.load(finished)
            log.info("training of %s already finished; skipping to evaluation", run_id)
        else:
            trained = train(
                config.train,
                model_path,
                data.train_path,
                data.validation_path,
                run_dir.train,
                config.seed,
                on_metrics=lambda step, values: registry.log_metrics(run_id, "train", values, step=step),
                progress=progress,
                resume=resume,
            )
            registry.add_artifact(run_id, "adapter" if trained.adapter else "model", trained.output_dir)
            registry.log_metrics(
                run_id,
                "train",
                {"train_seconds": trained.seconds, "tokens_per_second": trained.tokens_per_second},
            )
        report = evaluate(
            config.eval,
            model_path,
            trained.output_dir,
            data.train_path,
            data.validation_path,
            run_dir.eval,
            data.labels,
            config.seed,
            on_metrics=lambda system, values: registry.log_metrics(run_id, "eval", values, system=system),
            progress=progress,
            train_dir=run_dir.train,
        )
        html = write_html_report(run_dir.root, f"specialize run {run_id}")
        registry.add_artifact(run_id, "report", html)
        write_model_card(run_dir, config, data, trained, report)
        registry.add_artifact(run_id, "model_card", run_dir.model_card)
    except BaseException as exc:
        registry.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    registry.finish_run(run_id, "completed")
    return RunResult(run_id, run_dir, data, trained, report)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model_card(
    run_dir: RunDir, config: RunConfig, data: PreparedData, trained: TrainResult, report: EvalReport
) -> None:
    """`model_card.md`: base model, data hashes, method, hyperparameters, metrics and lineage."""
    from specialize.evaluate.overfitting import describe
    from specialize.evaluate.report import comparison_rows, paired_test_line

    written = json.loads(report.report_path.read_text(encoding="utf-8"))
    header, rows = comparison_rows(written)
    findings = "\n".join(
        f"\n{line}" for line in (paired_test_line(written), describe(written["overfitting"])) if line
    )
    table = "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )
    t = config.train
    adapter = (
        f"{t.adapter} (rank {t.lora.rank}, alpha {t.lora.alpha:g})"
        if t.adapter
        else "none (full fine-tuning)"
    )
    card = f"""# {run_dir.id}

Fine-tuned by specialize from **{config.base_model}**.

## Data
- training split: {data.n_train} examples, sha256 `{_sha256(data.train_path)}`
- validation split: {data.n_validation} examples, sha256 `{_sha256(data.validation_path)}`
- rejected rows: {data.n_rejected} (see `data/rejects.jsonl`)
- task: {report.task}{f" ({len(data.labels)} labels)" if data.labels else ""}

## Training
- method: {t.method}, adapter: {adapter}
- epochs {t.epochs:g}, batch size {t.batch_size} x accumulation {t.gradient_accumulation}, learning rate \
{t.learning_rate:g}, warm-up {t.warmup_ratio:g}, seed {config.seed}
- {trained.steps} steps, {trained.train_tokens} tokens in {trained.seconds:.0f} s \
({trained.tokens_per_second:.0f} tokens/s); final training loss {trained.final_train_loss:.4f}, validation loss \
{trained.validation_loss:.4f}

## Evaluation ({report.n_examples} validation examples)
{table}
{findings}

## Lineage
- parent run: none
- full configuration: `config.resolved.yaml`
"""
    write_atomic(run_dir.model_card, card)
