"""Continuous fine-tuning: `specialize retrain`, `promote`, `rollback` and `loop`.

Orchestration beside `pipeline.py`, which still creates every run: a retrained child is a run like any other, made
by `pipeline.run` with `parent_run` set. This module takes a served model through the cycle:

    monitor (monitor.monitor_model)  ->  next data (monitor.build_next_data)  ->  child run (pipeline.run)
    ->  parent and child evaluated on the same files (evaluate.evaluate)  ->  gate (monitor.promotion)
    ->  aliases moved in the registry (runs.Registry.set_alias)

What each step writes: the child's inputs in `<parent run>/retrain/<fingerprint>/`; in the child run,
`retrain.json` (parent, fingerprint, counts), `gate/<parent|child>-<regression|new>/report.json` and `gate.json`
(the decision and its numbers); registry metrics of stage `gate`; the `candidate` alias on the child, and the
watched alias (`production`) on it when the gate passes.

`loop` does all of it under a lock, and is idempotent: a child is identified by the fingerprint of its inputs, so
running the loop again with no new traffic, feedback or files trains nothing and moves nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.config import DEFAULT_REGISTRY, MonitorConfig, RunConfig, window_start
from specialize.errors import DataError, NotFoundError, PromotionError
from specialize.monitor import GateDecision, MonitorReport, NextData, build_next_data, monitor_model
from specialize.runs import Registry, RunDir, open_run, resolve_alias, write_atomic

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
LOCK_FILE = ".loop.lock"


@dataclass(frozen=True)
class RetrainResult:
    """A child and what the gate decided about it."""

    parent: str
    child: str
    reused: bool  # the child of the very same inputs existed already: nothing was trained
    inputs: NextData
    decision: GateDecision


@dataclass(frozen=True)
class LoopResult:
    """What one `specialize loop` did."""

    model: str
    locked_by: str | None = None  # another loop held the lock: nothing was done
    report: MonitorReport | None = None
    retrained: RetrainResult | None = None
    promoted: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """3 when the monitor flagged the model and no better child replaced it (cron mails on it), else 0."""
        return 3 if self.report is not None and self.report.flagged and not self.promoted else 0


def retrain(
    model: str,
    registry_url: str | None = None,
    *,
    feedback: bool = False,
    data: list[Path] | None = None,
    golden: Path | None = None,
    monitor: MonitorConfig | None = None,
    progress: bool = True,
) -> RetrainResult:
    """Build the next dataset of `model`, train a child run on it, and put child and parent through the gate.

    Args:
        model: the parent: a run id, `NAME@alias`, or a run directory.
        registry_url: the registry holding it (default: the one named in its config).
        feedback: learn from the corrections and ratings of served answers.
        data: new data files.
        golden: examples added to the regression set (default `monitor.retrain.golden`).
        monitor: the settings to use instead of the parent's `monitor:` section.
        progress: show progress bars.

    Raises:
        DataError: nothing new to learn from, or a bad line in a file.
    """
    parent, config, registry = open_run(model, registry_url)
    inputs = _next_data(registry, parent, config, monitor, feedback, data or [], golden)
    if inputs.empty:
        raise DataError(inputs.nothing_new())
    return _retrain_on(registry, parent, config, inputs, monitor or config.monitor, progress)


def _next_data(
    registry: Registry,
    parent: RunDir,
    config: RunConfig,
    monitor: MonitorConfig | None,
    feedback: bool,
    data: list[Path],
    golden: Path | None,
) -> NextData:
    from specialize.train import METHODS

    if monitor is not None:
        config = config.model_copy(update={"monitor": monitor})
    return build_next_data(
        registry,
        parent,
        config,
        METHODS[config.train.method].rows,
        feedback,
        data,
        golden or config.monitor.retrain.golden,
    )


def _retrain_on(
    registry: Registry,
    parent: RunDir,
    config: RunConfig,
    inputs: NextData,
    monitor: MonitorConfig,
    progress: bool,
) -> RetrainResult:
    from specialize.pipeline import run as run_pipeline

    child_id = _existing_child(registry, parent.id, inputs.fingerprint)
    reused = child_id is not None
    if child_id is None:
        data = config.data.model_copy(
            update={
                "train": inputs.train,
                "validation": inputs.validation,
                "format": "auto",
                "columns": {},
                "labels": inputs.labels if config.data.labels is not None else None,
                # The parent's prepared rows were sampled already; sampling again would drop new examples.
                "max_train_examples": None,
                "max_per_label": None,
            }
        )
        child_config = config.model_copy(update={"data": data, "monitor": monitor})
        result = run_pipeline(
            RunConfig.model_validate(child_config.model_dump()), progress, parent_run=parent.id
        )
        child_id = result.run_id
        write_atomic(
            result.run_dir.root / "retrain.json",
            json.dumps(
                {
                    "parent": parent.id,
                    "fingerprint": inputs.fingerprint,
                    "inputs": str(inputs.directory),
                    "counts": inputs.counts,
                },
                indent=2,
            ),
        )
    child = RunDir(Path(registry.get_run(child_id)["run_dir"]))
    decision = _gate(registry, parent, child, config, inputs, monitor, progress)
    registry.set_alias(child.id, CANDIDATE, note=f"retrained from {parent.id}")
    return RetrainResult(parent.id, child.id, reused, inputs, decision)


def _existing_child(registry: Registry, parent_id: str, fingerprint: str) -> str | None:
    """A completed child of `parent_id` trained on the inputs with this fingerprint, if there is one."""
    for run in reversed(registry.list_runs()):
        if run["parent_run"] != parent_id or run["status"] != "completed":
            continue
        record = Path(run["run_dir"]) / "retrain.json"
        if record.is_file() and json.loads(record.read_text(encoding="utf-8"))["fingerprint"] == fingerprint:
            return str(run["id"])
    return None


def _gate(
    registry: Registry,
    parent: RunDir,
    child: RunDir,
    config: RunConfig,
    inputs: NextData,
    monitor: MonitorConfig,
    progress: bool,
) -> GateDecision:
    """Evaluate parent and child on the regression set and the new examples, and decide (once per child)."""
    from specialize.evaluate import evaluate
    from specialize.models import resolve_model
    from specialize.monitor.promotion import compare_reports, decide
    from specialize.train import RESULT_FILE, TrainResult

    recorded = child.root / "gate.json"
    if recorded.is_file():
        return GateDecision.from_json(json.loads(recorded.read_text(encoding="utf-8")))
    gate = monitor.gate
    model_path = resolve_model(config.base_model)
    eval_config = config.eval.model_copy(update={"systems": ["fine_tuned"], "max_examples": None})
    labels = inputs.labels
    sets = {"regression": inputs.regression}
    if inputs.counts.get("held_out", 0) >= gate.min_new_examples:
        sets["new"] = inputs.new
    reports: dict[tuple[str, str], Path] = {}
    for who, run in (("parent", parent), ("child", child)):
        weights = TrainResult.load(run.train / RESULT_FILE).output_dir
        for name, path in sets.items():
            out = child.root / "gate" / f"{who}-{name}"
            log.info("gate: %s on the %s examples", who, name)
            report = evaluate(
                eval_config,
                model_path,
                weights,
                run.data / "train.jsonl",
                path,
                out,
                labels,
                config.seed,
                progress=progress,
            )
            reports[(who, name)] = report.report_path
    compared = {
        name: compare_reports(
            name,
            path,
            reports[("parent", name)],
            reports[("child", name)],
            -gate.margin if name == "regression" else 0.0,
            gate.alpha,
            config.seed,
        )
        for name, path in sets.items()
    }
    decision = decide(gate, compared["regression"], compared.get("new"))
    write_atomic(recorded, json.dumps(decision.to_json(), indent=2))
    values = {"passed": float(decision.passed)}
    for name, c in compared.items():
        values.update(
            {
                f"{name}_difference": c.difference,
                f"{name}_lower_bound": c.lower_bound,
                f"{name}_p_value": c.p_value,
            }
        )
    registry.log_metrics(child.id, "gate", values)
    registry.add_artifact(child.id, "gate", recorded)
    return decision


def promote(
    run: str, alias: str, registry_url: str | None = None, force: bool = False
) -> tuple[str, str | None, str]:
    """Point `NAME@alias` at `run` (NAME: the run's name); returns (NAME@alias, the run it named before or None,
    the run it names now).

    A retrained child the gate refused is not promoted unless `force`.

    Raises:
        PromotionError: the gate refused the run, or it has no trained model to serve.
    """
    run_dir, _, registry = open_run(run, registry_url)
    row = registry.get_run(run_dir.id)
    if row["status"] != "completed":
        raise PromotionError(
            f"run {run_dir.id} is {row['status']}, not completed: only a finished run can be served behind an alias"
        )
    recorded = run_dir.root / "gate.json"
    note = None
    if (run_dir.root / "retrain.json").is_file() and not recorded.is_file() and not force:
        # a child is completed before its gate runs: without this, a child whose gate is still running (or was
        # killed) would be promoted unchecked
        raise PromotionError(
            f"{run_dir.id} is a retrained child whose gate has not decided yet (no gate.json): run "
            f"`specialize retrain {row['parent_run']}` again with the same inputs to finish it, or promote with --force"
        )
    if recorded.is_file():
        decision = GateDecision.from_json(json.loads(recorded.read_text(encoding="utf-8")))
        note = "gate passed" if decision.passed else "gate refused; promoted with --force"
        if not decision.passed and not force:
            raise PromotionError(
                f"the gate refused {run_dir.id} against its parent {row['parent_run']}:\n{decision.summary()}\n"
                "promote it anyway with --force"
            )
    previous = registry.set_alias(run_dir.id, alias, note=note)
    return f"{row['name']}@{alias}", previous, run_dir.id


def rollback(ref: str, registry_url: str | None = None) -> tuple[str, str, str]:
    """Move `NAME@alias` (or `alias`, when one run name has it) back to the run it named before its last
    promotion; returns (NAME@alias, the run it named, the run it names now).

    Raises:
        NotFoundError: no such alias, or the alias is on more than one run name and `ref` does not say which.
        PromotionError: the alias is still on its first run.
    """
    registry = Registry(registry_url or DEFAULT_REGISTRY)
    name, at, alias = ref.rpartition("@")
    if not at:
        alias = ref
        names = sorted({a["name"] for a in registry.list_aliases() if a["alias"] == alias})
        if len(names) != 1:
            found = ", ".join(f"{n}@{alias}" for n in names) or "none"
            raise NotFoundError(f"rollback {ref}: name the model as NAME@{alias} (aliases {alias}: {found})")
        name = names[0]
    try:
        current, before = registry.rollback_target(name, alias)
    except NotFoundError as exc:
        if registry.alias_target(name, alias) is not None:
            raise PromotionError(str(exc)) from None
        raise
    registry.set_alias(before, alias, action="rollback", note=f"rolled back from {current}")
    return f"{name}@{alias}", current, before


def loop(config: RunConfig, progress: bool = True) -> LoopResult:
    """One cycle for cron: monitor `NAME@alias`, retrain when there is cause and material, gate, promote.

    It retrains when the monitor flagged drift or a quality drop, or when `monitor.retrain.min_new_examples` new
    examples have come in, and there is something new to learn from; a child already trained on the same inputs is
    not trained again. Another loop holding the lock (on the same runs folder) makes it return at once.

    Args:
        config: the run config of the served model (its `name`, registry and `monitor:` section are used).
        progress: show progress bars.

    Raises:
        NotFoundError: `NAME@alias` names no run yet (promote one first).
    """
    monitor = config.monitor
    model = f"{config.name}@{monitor.alias}"
    with _lock(config.runs_dir) as holder:
        if holder is not None:
            return LoopResult(model, locked_by=holder)
        registry = Registry(config.registry_url)
        if registry.alias_target(config.name, monitor.alias) is None:
            raise NotFoundError(
                f"no run is {model} yet; promote one first: specialize promote RUN --alias {monitor.alias}"
            )
        report = monitor_model(registry, model, monitor, window_start(monitor.since))
        parent, parent_config, _ = open_run(resolve_alias(registry, model), config.registry_url)
        notes = list(report.reasons)
        inputs = _next_data(
            registry,
            parent,
            parent_config,
            monitor,
            monitor.retrain.feedback,
            monitor.retrain.data,
            monitor.retrain.golden,
        )
        if inputs.empty:
            return LoopResult(model, report=report, notes=[*notes, inputs.nothing_new()])
        new = inputs.counts.get("new_examples", 0)
        known = _existing_child(registry, parent.id, inputs.fingerprint) is not None
        if not known and not report.flagged and new < monitor.retrain.min_new_examples:
            notes.append(
                f"{new} new examples since {parent.id} was trained, fewer than retrain.min_new_examples "
                f"({monitor.retrain.min_new_examples}): no retraining"
            )
            return LoopResult(model, report=report, notes=notes)
        result = _retrain_on(registry, parent, parent_config, inputs, monitor, progress)
        promoted = False
        if result.decision.passed:
            registry.set_alias(result.child, monitor.alias, note=f"loop: gate passed against {parent.id}")
            promoted = True
        return LoopResult(model, report=report, retrained=result, promoted=promoted, notes=notes)


@contextlib.contextmanager
def _lock(runs_dir: Path) -> Iterator[str | None]:
    """Hold the loop lock of `runs_dir`, yielding None; or yield who holds it, without waiting.

    An advisory `flock` on a file: the kernel drops it when its holder exits, however it exits, so a killed loop
    never leaves a stale lock behind (a lock file that merely exists would).
    """
    import fcntl

    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / LOCK_FILE
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            yield handle.read().strip() or "another process"
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield None
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def describe(result: RetrainResult) -> dict[str, Any]:
    """A retrain result as JSON."""
    return {
        "parent": result.parent,
        "child": result.child,
        "reused": result.reused,
        "inputs": str(result.inputs.directory),
        "counts": result.inputs.counts,
        "gate": result.decision.to_json(),
    }
