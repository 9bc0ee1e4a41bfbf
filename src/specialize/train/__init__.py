"""Training: supervised fine-tuning with LoRA, DoRA or every weight.

Reads the prepared `data/train.jsonl` and `data/validation.jsonl` of a run, writes `train/adapter/` (or
`train/model/` for full fine-tuning) and `train/metrics.jsonl`, and reports the loss, tokens/s and ETA while it
runs. The loop is plain PyTorch around a PEFT model; see `batching.py` for why it is not a trainer library's.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.config import TrainConfig
from specialize.data import encode_conversation, read_prepared
from specialize.errors import TrainingError

log = logging.getLogger(__name__)

MetricsSink = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    """Where the trained weights are and how training went."""

    output_dir: Path
    adapter: bool
    steps: int
    train_tokens: int
    seconds: float
    final_train_loss: float
    validation_loss: float

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / max(self.seconds, 1e-9)


def train(
    config: TrainConfig,
    model_path: Path,
    train_file: Path,
    validation_file: Path,
    out_dir: Path,
    seed: int = 0,
    on_metrics: MetricsSink | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune the model at `model_path` on a prepared training split.

    Args:
        config: the `train:` section.
        model_path: local directory of the base model.
        train_file: prepared training split (chat JSONL).
        validation_file: prepared validation split, for the validation loss.
        out_dir: the run's `train/` directory.
        seed: seeds initialisation, dropout and data order.
        on_metrics: called with (step, metrics) every `config.log_every` steps, e.g. to fill the registry.
        progress: show a progress bar with loss, tokens/s and ETA.

    Returns:
        The path of the adapter (or full model) and the training figures.

    Raises:
        TrainingError: when the loss becomes NaN or infinite, naming what to change.
    """
    import torch
    from tqdm.auto import tqdm

    from specialize.models import load_model
    from specialize.train.batching import collate, length_grouped_batches, summed_loss

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, tokenizer = load_model(model_path)
    model = _prepare_model(model, config)
    train_set = [encode_conversation(tokenizer, r["messages"]) for r in read_prepared(train_file)]
    val_set = [encode_conversation(tokenizer, r["messages"]) for r in read_prepared(validation_file)]
    per_step = config.batch_size * config.gradient_accumulation
    steps = config.max_steps or max(1, math.ceil(config.epochs * len(train_set) / per_step))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, steps, config.warmup_ratio)

    lengths = [len(e.input_ids) for e in train_set]
    micro_batches: list[list[int]] = []
    metrics_path = out_dir / "metrics.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    model.train()
    tokens, started, last_loss = 0, time.perf_counter(), float("nan")
    bar = tqdm(total=steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    with metrics_path.open("w", encoding="utf-8") as metrics_file:
        for step in range(1, steps + 1):
            group = []
            for _ in range(config.gradient_accumulation):
                if not micro_batches:
                    micro_batches = length_grouped_batches(lengths, config.batch_size, rng)
                group.append(collate([train_set[i] for i in micro_batches.pop()], tokenizer.pad_token_id))
            n_targets = sum(int((b["targets"] != -100).sum()) for b in group)
            step_loss = 0.0
            for batch in group:
                loss_sum, _ = summed_loss(model, batch)
                (loss_sum / n_targets).backward()
                step_loss += loss_sum.item()
                tokens += int(batch["attention_mask"].sum())
            last_loss = step_loss / n_targets
            if not math.isfinite(last_loss):
                raise TrainingError(
                    f"the training loss became {last_loss} at step {step}; lower train.learning_rate "
                    f"(now {config.learning_rate:g}), e.g. --set train.learning_rate={config.learning_rate / 4:g}"
                )
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tokens / elapsed:.0f}")
            if step % config.log_every == 0 or step == steps:
                row = {"loss": last_loss, "learning_rate": scheduler.get_last_lr()[0],
                       "tokens_per_second": tokens / elapsed, "tokens": tokens}
                metrics_file.write(json.dumps({"step": step, **row}) + "\n")
                metrics_file.flush()
                if on_metrics:
                    on_metrics(step, row)
    bar.close()
    seconds = time.perf_counter() - started
    val_loss = validation_loss(model, val_set, tokenizer.pad_token_id, config.batch_size)
    if on_metrics:
        on_metrics(steps, {"validation_loss": val_loss})
    output = _save(model, tokenizer, out_dir, adapter=config.adapter is not None)
    log.info("trained %d steps, %d tokens in %.0f s (%.0f tokens/s)", steps, tokens, seconds, tokens / seconds)
    return TrainResult(output, config.adapter is not None, steps, tokens, seconds, last_loss, val_loss)


def validation_loss(model: Any, examples: list[Any], pad_id: int, batch_size: int) -> float:
    """Mean token cross-entropy on the target tokens of `examples`."""
    import torch

    from specialize.train.batching import collate, summed_loss

    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            loss_sum, n = summed_loss(model, collate([examples[i] for i in order[start : start + batch_size]], pad_id))
            total, count = total + loss_sum.item(), count + n
    model.train(was_training)
    return total / max(count, 1)


def _prepare_model(model: Any, config: TrainConfig) -> Any:
    if config.adapter is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    peft_config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_dora=config.adapter == "dora",
        use_rslora=lora.rslora,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def _schedule(optimizer: Any, steps: int, warmup_ratio: float) -> Any:
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, round(steps * warmup_ratio), steps)


def _save(model: Any, tokenizer: Any, out_dir: Path, adapter: bool) -> Path:
    """Save into a temporary sibling, then rename: a crash never leaves a half-written adapter."""
    target = out_dir / ("adapter" if adapter else "model")
    staging = out_dir / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target
