"""`model_card.md`: what a finished run is, in one page a person reads before using its model: base model, data
hashes, method, hyperparameters, the comparison with every baseline, and lineage.

Written by `pipeline.py` once a run is evaluated; it reads the whole config and every stage's result, which is why
it lives at the orchestration layer and not in a stage.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from specialize.config import ON_POLICY
from specialize.runs import write_atomic
from specialize.train import SAMPLES_FILE

if TYPE_CHECKING:
    from pathlib import Path

    from specialize.config import RunConfig
    from specialize.data import PreparedData
    from specialize.evaluate import EvalReport
    from specialize.runs import RunDir
    from specialize.train import TrainResult


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model_card(
    run_dir: RunDir,
    config: RunConfig,
    data: PreparedData,
    trained: TrainResult,
    report: EvalReport,
    parent_run: str | None = None,
) -> None:
    """`model_card.md`: base model, data hashes, method, hyperparameters, metrics and lineage."""
    from specialize.evaluate.report import comparison_text

    comparison = comparison_text(json.loads(report.report_path.read_text(encoding="utf-8")), markdown=True)
    t = config.train
    on_policy = t.method in ON_POLICY
    # On-policy, the validation figure early stopping watches is minus the mean reward of greedy answers.
    validation = "validation figure (minus the mean reward)" if on_policy else "validation loss"
    samples = (
        f"\n- samples, rewards and advantages of every step: `train/{SAMPLES_FILE}`" if on_policy else ""
    )
    if config.reward is not None:
        samples += f"\n- reward: {config.reward.type} ({config.reward.model_dump_json(exclude={'type'})})"
    processes = f" x {trained.processes} processes" if trained.processes > 1 else ""
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
- epochs {t.epochs:g}, batch size {t.batch_size} x accumulation {t.gradient_accumulation}{processes}, learning rate \
{t.learning_rate:g}, warm-up {t.warmup_ratio:g}, seed {config.seed}
- {trained.steps} steps, {trained.train_tokens} tokens in {trained.seconds:.0f} s \
({trained.tokens_per_second:.0f} tokens/s); final training loss {trained.final_train_loss:.4f}, {validation} \
{trained.validation_loss:.4f}{samples}

## Evaluation ({report.n_examples} validation examples)
{comparison}

## Lineage
- parent run: {parent_run or "none"}
- full configuration: `config.resolved.yaml`
"""
    write_atomic(run_dir.model_card, card)
