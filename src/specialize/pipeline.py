"""`specialize run`: the owner of a run and of the order of its stages.

A run goes: check inputs -> create the run (data stage) -> train -> evaluate -> report and model card.

Inputs are checked once, before anything is written: the config (already validated by `load_config`), the base
model name, the device asked for, every line of the data files, and whether the rows fit `train.method` (DPO
needs pairs). The run directory is then built under a hidden `.partial` name while the data stage fills it, and
only renamed and entered in the registry once that has succeeded (`runs.build_run_dir`), so a user mistake
leaves neither a half-written run nor a registry row. A failure after that (a diverging loss, a crash) marks the
run `failed` and keeps its directory for diagnosis; `resume` continues it, skipping the stages it finished.

Each stage receives only its own section of the config (`data:`, `train:`, `eval:`) and plain arguments: paths
of the files the previous stage wrote, the seed, the model directory resolved here once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specialize.config import RunConfig, TrainConfig, save_resolved
from specialize.data import Example, PreparedData, load_examples, prepare_data, read_data
from specialize.data.audit import left_out
from specialize.errors import DataError, RunNotFoundError
from specialize.evaluate import EvalReport, evaluate
from specialize.evaluate.report import load_report, recorded_scoring, write_html_report
from specialize.model_card import write_model_card
from specialize.models import resolve_model
from specialize.runs import Registry, RunDir, build_run_dir, new_run_id, open_run, write_atomic
from specialize.train import RESULT_FILE, SAMPLES_FILE, TrainResult, check_rows, train
from specialize.train.checkpoint import check_processes
from specialize.train.checkpoint import latest as latest_checkpoint
from specialize.train.distributed import check_sharding, current

if TYPE_CHECKING:
    from specialize.config import RewardConfig
    from specialize.train.loop import MetricsSink
    from specialize.train.placement import Placement
    from specialize.train.rewards import Reward

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What a complete run produced."""

    run_id: str
    run_dir: RunDir
    data: PreparedData
    train: TrainResult
    eval: EvalReport


@dataclass(frozen=True)
class RunInputs:
    """What `check_inputs` found: the base model's directory, where training runs, the examples read, and the
    reward of the `reward:` section."""

    model_path: Path
    placement: Placement
    examples: tuple[list[Example], list[Example] | None]
    reward: Reward | None = None


def run(config: RunConfig, progress: bool = True, parent_run: str | None = None) -> RunResult:
    """Prepare data, fine-tune, evaluate against the base model, and report.

    Args:
        config: a validated run config (see `specialize.config.load_config`).
        progress: show progress bars.
        parent_run: the run this one descends from (a hyperparameter study, or a retrained child's parent),
            recorded in the registry and shown in the model card.

    Returns:
        The run's id, directory, and the result of each stage.
    """
    inputs = check_inputs(config)
    run_dir, data, registry = create_run(config, inputs, parent_run)
    rejected, not_sampled = left_out(
        json.loads(data.audit_path.read_text(encoding="utf-8"))["rejected_by_kind"]
    )
    log.info(
        "run %s: %d training, %d validation examples, %d rejected, %d not sampled",
        run_dir.id,
        data.n_train,
        data.n_validation,
        rejected,
        not_sampled,
    )
    return _train_and_evaluate(
        config,
        run_dir,
        data,
        inputs.model_path,
        registry,
        progress,
        resume=False,
        placement=inputs.placement,
        reward=inputs.reward,
    )


def prepare_run(config: RunConfig, out_dir: Path | None = None) -> tuple[PreparedData, str | None]:
    """`specialize data prepare`: the data stage of a run, alone, after the same checks as `run`.

    Without `out_dir` a run is created as `run` would (directory, resolved config, registry row with status
    `prepared`); with it, only the data files are written there. Returns the prepared data and the run id.
    """
    inputs = check_inputs(config)
    if out_dir is not None:
        return prepare_data(config.data, load_tokenizer(inputs), out_dir, config.seed, inputs.examples), None
    run_dir, data, registry = create_run(config, inputs)
    registry.finish_run(run_dir.id, "prepared")
    return data, run_dir.id


def check_inputs(config: RunConfig) -> RunInputs:
    """Check everything a run needs before anything is written, cheapest first; the model is fetched last.

    Raises:
        ModelNotFoundError: `base_model` is neither a catalogue name nor a model directory.
        ResourceError: `train.device` asks for a GPU that is not there.
        DataError: a bad line in a data file (all listed), rows `train.method` cannot learn from, or rows the
            reward cannot score (a label verifier on rows without labels).
        ConfigError: the reward's function cannot be imported, or its reward model's run is not a finished one;
            an FSDP launch of a run that trains an adapter or a method other than SFT.
        ResourceError, ConfigError: `train.compile` where training does not run on a CUDA GPU.
    """
    from specialize.models import check_model
    from specialize.train.placement import check_compile, choose_placement

    check_model(config.base_model)
    placement = choose_placement(config.train.device, config.train.precision)
    check_compile(config.train.compile, placement)
    if (processes := current()) is not None and processes.sharded:
        check_sharding(config.train)
    examples = load_examples(config.data)
    every = [*examples[0], *(examples[1] or [])]
    check_rows(config.train.method, every)
    reward = _reward(config)
    if reward is not None:
        reward.check([e.to_json() for e in every])
    return RunInputs(resolve_model(config.base_model), placement, examples, reward)


def _reward(config: RunConfig) -> Reward | None:
    from specialize.train.rewards import build_reward

    return None if config.reward is None else build_reward(config.reward, config.registry_url)


def create_run(
    config: RunConfig, inputs: RunInputs, parent_run: str | None = None
) -> tuple[RunDir, PreparedData, Registry]:
    """Create a run: its data stage and resolved config in a staged directory, then its registry row (`running`).

    Raises:
        DataError: nothing left after cleaning; no run directory or registry row is left behind.
    """
    run_dir, data = build_run(config, inputs, config.runs_dir, new_run_id(config.name))
    registry = Registry(config.registry_url)
    registry.create_run(
        run_dir, config.name, config.base_model, config.model_dump(mode="json"), parent_run=parent_run
    )
    registry.log_metrics(
        run_dir.id,
        "data",
        {
            "train_examples": data.n_train,
            "validation_examples": data.n_validation,
            "rejected_examples": data.n_rejected,
        },
    )
    for kind, path in (
        ("train_split", data.train_path),
        ("validation_split", data.validation_path),
        ("rejects", data.rejects_path),
        ("audit", data.audit_path),
    ):
        registry.add_artifact(run_dir.id, kind, path)
    return run_dir, data, registry


def build_run(config: RunConfig, inputs: RunInputs, parent: Path, name: str) -> tuple[RunDir, PreparedData]:
    """The run directory `parent/name` with its data stage and resolved config, built under a staging name and
    renamed only once complete (`runs.build_run_dir`); no registry row. A new run and a study mirrored on
    another machine are both made this way."""
    tokenizer = load_tokenizer(inputs)

    def fill(staging: RunDir) -> PreparedData:
        prepared = prepare_data(config.data, tokenizer, staging.data, config.seed, inputs.examples)
        save_resolved(config, staging.config)
        return prepared

    run_dir, staged = build_run_dir(parent, name, fill)
    return run_dir, dataclasses.replace(staged, directory=run_dir.data)


def load_tokenizer(inputs: RunInputs) -> Any:
    """The base model's tokenizer, which the data stage needs to apply the chat template and count tokens."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(inputs.model_path)


def resume(run: str, registry_url: str | None = None, progress: bool = True) -> RunResult:
    """Continue a run that stopped (crash, kill, interrupt) from its last checkpoint, skipping finished stages.

    Args:
        run: a run id in the registry, or the path of a run directory.
        registry_url: the registry holding the run (default: the one named in the run's config).
        progress: show progress bars.
    """
    run_dir, config, registry = open_run(run, registry_url)
    last = latest_checkpoint(run_dir.train / "checkpoints")
    if last is not None:  # before anything changes or loads: a wrong --processes is told at once
        processes = current()
        check_processes(
            last, processes.world if processes else 1, processes is not None and processes.sharded
        )
    registry.set_status(run_dir.id, "running")
    model_path = resolve_model(config.base_model)
    data = PreparedData.load(run_dir.data)
    if not (run_dir.train / RESULT_FILE).exists():
        registry.delete_metrics_after(run_dir.id, "train", int(last.name.split("-")[-1]) if last else 0)
    return _train_and_evaluate(
        config, run_dir, data, model_path, registry, progress, resume=True, reward=_reward(config)
    )


def evaluate_run(
    run: str, data_file: Path, registry_url: str | None = None, progress: bool = True
) -> EvalReport:
    """Evaluate a finished run on a new file of examples (a test set, say) and record it in the registry.

    The file is read as the run read its own data (`data.format`, `columns`, label field and labels), so a
    preference run is scored on pairs and a CSV run on CSV. Every configured system answers the file's examples;
    the result goes to `eval/<file stem>/report.json` and to the registry as stage `eval:<file stem>`, next to the
    run's own validation results.

    Args:
        run: a run id in the registry, or the path of a run directory.
        data_file: the examples, in any format `specialize run` reads.
        registry_url: the registry holding the run (default: the one named in the run's config).
        progress: show progress bars.
    """
    run_dir, config, registry = open_run(run, registry_url)
    finished = run_dir.train / RESULT_FILE
    if not data_file.is_file():
        raise DataError(f"--data {data_file}: no such file; give the path of a data file to evaluate on")
    if not finished.exists():
        raise RunNotFoundError(
            f"run {run_dir.id} has no trained model yet; finish it with `specialize train --resume {run_dir.id}`"
        )
    trained = TrainResult.load(finished)
    data = config.data
    examples = read_data(
        data_file,
        format=data.format,
        columns={str(k): v for k, v in data.columns.items()},
        label_field=data.label_field,
        labels=data.labels,
    )
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
        reward=_reward(config),
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
    placement: Placement | None = None,
    reward: Reward | None = None,
) -> RunResult:
    """The stages after the data stage, in order; a stage whose output is recorded is skipped on resume."""
    run_id = run_dir.id
    try:
        trained = _train_stage(
            config, run_dir, data, model_path, registry, progress, resume, placement, reward
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
            reward=reward,
        )
        html = write_html_report(run_dir.root, f"specialize run {run_id}")
        registry.add_artifact(run_id, "report", html)
        write_model_card(run_dir, config, data, trained, report, registry.get_run(run_id)["parent_run"])
        registry.add_artifact(run_id, "model_card", run_dir.model_card)
    except BaseException as exc:
        registry.finish_run(run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    registry.finish_run(run_id, "completed")
    return RunResult(run_id, run_dir, data, trained, report)


def _train_stage(
    config: RunConfig,
    run_dir: RunDir,
    data: PreparedData,
    model_path: Path,
    registry: Registry,
    progress: bool,
    resume: bool,
    placement: Placement | None,
    reward: Reward | None,
) -> TrainResult:
    finished = run_dir.train / RESULT_FILE
    processes = current()
    job = TrainJob(
        config.train,
        model_path,
        data.train_path,
        data.validation_path,
        run_dir.train,
        config.seed,
        resume,
        placement,
        config.reward,
        config.registry_url,
    )
    if resume and finished.exists():
        log.info("training of %s already finished; skipping to evaluation", run_dir.id)
        if processes is not None:
            processes.from_main(None)  # nothing for the other processes to train
        return TrainResult.load(finished)
    if processes is not None:
        processes.from_main(job)
    trained = job.run(
        reward,
        progress,
        on_metrics=lambda step, values: registry.log_metrics(run_dir.id, "train", values, step=step),
    )
    registry.add_artifact(run_dir.id, "adapter" if trained.adapter else "model", trained.output_dir)
    if (run_dir.train / SAMPLES_FILE).exists():
        registry.add_artifact(run_dir.id, "samples", run_dir.train / SAMPLES_FILE)
    registry.log_metrics(
        run_dir.id,
        "train",
        {"train_seconds": trained.seconds, "tokens_per_second": trained.tokens_per_second},
    )
    return trained


@dataclass(frozen=True)
class TrainJob:
    """What rank 0 of a multi-process run hands the other processes to train: `train`'s arguments, and the
    `reward:` section (each process builds its own reward from it)."""

    config: TrainConfig
    model_path: Path
    train_file: Path
    validation_file: Path
    out_dir: Path
    seed: int
    resume: bool
    placement: Placement | None
    reward: RewardConfig | None
    registry_url: str

    def run(
        self,
        reward: Reward | None,
        progress: bool,
        on_metrics: MetricsSink | None = None,
    ) -> TrainResult:
        """`train` on this job: the one call rank 0 and the processes that follow it make alike."""
        return train(
            self.config,
            self.model_path,
            self.train_file,
            self.validation_file,
            self.out_dir,
            self.seed,
            on_metrics=on_metrics,
            progress=progress,
            resume=self.resume,
            placement=self.placement,
            reward=reward,
        )


def follow() -> None:
    """Rank 1 and up of `specialize run` or `specialize train --resume` under several processes: wait for the
    training rank 0 hands over (once it has checked the inputs and created or opened the run), train it with
    the others, and return; rank 0 alone records, evaluates and reports.

    The run's directory must be one every process sees (one machine, or a shared file system).
    """
    from specialize.train.rewards import build_reward

    processes = current()
    job: TrainJob | None = processes.from_main(None) if processes is not None else None
    if job is None:
        return
    job.run(None if job.reward is None else build_reward(job.reward, job.registry_url), progress=False)
