"""Training: every `train.method` (SFT, DPO, ORPO, KTO, a reward model, online DPO, GRPO) through one loop, with
LoRA, DoRA or every weight.

Reads the prepared `data/train.jsonl` and `data/validation.jsonl` of a run, writes `train/adapter/` (or
`train/model/` for full fine-tuning), `train/metrics.jsonl` and, for the on-policy methods, `train/samples.jsonl`
(every sample with its reward and advantage, per step), and reports the loss, tokens/s and ETA while it runs. The
loop is plain PyTorch around a PEFT model; see `batching.py` for why it is not a trainer library's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specialize.config import EarlyStoppingConfig, TrainConfig
from specialize.data import read_prepared
from specialize.errors import TrainingError
from specialize.runs import write_atomic
from specialize.train.checkpoint import TrainerState
from specialize.train.objective import METHODS, objective_for

if TYPE_CHECKING:
    from specialize.train.distributed import Processes
    from specialize.train.placement import Placement
    from specialize.train.rewards import Reward

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
SAMPLES_FILE = "samples.jsonl"
MetricsSink = Callable[[int, dict[str, float]], None]
EvaluationHook = Callable[[int, Any], None]


@dataclass
class Preloaded:
    """A base model and tokenizer kept in memory across trainings (a search worker's), and the rows encoded so far.

    `train` puts its adapter on `model` and takes it off again when it returns or fails; full fine-tuning puts
    the weights back. Encoded rows are kept by method and row: a sequence depends on the tokenizer alone, and a
    DPO pair's reference scores (filled in the first time a training draws the pair) on the base model, both the
    same for every training on this model.
    """

    model: Any
    tokenizer: Any
    encoded: dict[str, Any] = field(default_factory=dict)


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
    computed_tokens: int = 0  # tokens run through the model: a prefix shared by a batch counts once
    method: str = "sft"  # train.method; on-policy methods' losses are not a training/validation pair
    processes: int = 1  # data-parallel processes; each step's global batch is batch x accumulation x these
    memory_estimate: int = 0  # bytes, the pre-check's estimate of peak memory (`resources.estimate_memory`)

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / max(self.seconds, 1e-9)

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps({**self.__dict__, "output_dir": str(self.output_dir)}, indent=2))

    @classmethod
    def load(cls, path: Path) -> TrainResult:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{**doc, "output_dir": Path(doc["output_dir"])})


def train(
    config: TrainConfig,
    model_path: Path,
    train_file: Path,
    validation_file: Path,
    out_dir: Path,
    seed: int = 0,
    on_metrics: MetricsSink | None = None,
    progress: bool = True,
    resume: bool = False,
    placement: Placement | None = None,
    reward: Reward | None = None,
    preloaded: Preloaded | None = None,
    evaluate_every: int | None = None,
    on_evaluation: EvaluationHook | None = None,
) -> TrainResult:
    """Fine-tune the model at `model_path` on a prepared training split.

    Args:
        config: the `train:` section.
        model_path: local directory of the base model.
        train_file: prepared training split (chat JSONL).
        validation_file: prepared validation split, for the validation loss and early stopping.
        out_dir: the run's `train/` directory.
        seed: seeds initialisation, dropout and data order.
        on_metrics: called with (step, metrics) every `config.log_every` steps, e.g. to fill the registry.
        progress: show a progress bar with loss, tokens/s and ETA.
        resume: continue from the newest checkpoint in `out_dir/checkpoints` (a fresh start if there is none).
        placement: device and precision, as the pipeline chose them when it checked the run; default: chosen
            here from `config.device` and `config.precision`.
        reward: what an on-policy method (`online_dpo`, `grpo`) scores its samples with (`rewards.build_reward`).
        preloaded: a base model already in memory (a search worker's), trained instead of loading
            `model_path`, and given back as it came: its adapter removed, or its weights restored.
        evaluate_every: call `on_evaluation` every this many steps, and at the last step.
        on_evaluation: called with (step, model in eval mode); raising from it stops training (a search
            prunes a trial that way).

    Under `torchrun`, `accelerate launch` or `specialize run --processes N`, every process calls this with the
    same arguments and trains data-parallel (`distributed.py`): each step's global batch is `batch_size` x
    `gradient_accumulation` x the processes, drawn as one process would draw it and split between them, so the
    steps, the schedule and the seed mean what they mean on one process; rank 0 alone writes checkpoints,
    metrics and the weights (and, on-policy, its own samples to `samples.jsonl`), and the others return once
    the last step is taken (their result's `validation_loss` is NaN).

    Returns:
        The path of the adapter (or full model) and the training figures.

    Raises:
        ResourceError: before the first step, when memory or disk is short for this model and batch.
        TrainingError: when the loss becomes NaN or infinite, naming what to change.
    """
    import torch

    from specialize.models import load_model
    from specialize.train.distributed import check_device, check_sharding, current, shard_model
    from specialize.train.placement import Placement, check_compile, choose_placement, compile_layers

    placement = placement or choose_placement(config.device, config.precision)
    processes = current()
    if processes is not None:
        check_device(processes, placement.device)
        if processes.sharded:
            check_sharding(config)
        placement = Placement(processes.device, placement.autocast_dtype)
        log.info(
            "data-parallel training in %d processes (this one: rank %d)", processes.world, processes.rank
        )
    check_compile(config.compile, placement)
    log.info("training on %s", placement.describe())
    torch.manual_seed(seed)
    rng = random.Random(seed)
    method = METHODS[config.method]
    if (
        method.scalar_head
    ):  # a reward model needs the base with a scalar head, not the preloaded language model
        preloaded = None
    base, tokenizer = (
        (preloaded.model, preloaded.tokenizer)
        if preloaded
        else load_model(model_path, scalar_head=method.scalar_head)
    )
    weights = None
    if preloaded is not None and config.adapter is None:
        weights = {k: v.detach().clone() for k, v in base.state_dict().items()}
    # The adapter is drawn on the CPU, then moved: the same seed gives the same start on any device.
    model = _prepare_model(base.cpu() if preloaded else base, config, method.scalar_head)
    if processes is not None and processes.sharded:
        shard_model(model, processes)  # moves each shard, not the whole model, to the device
    else:
        model = model.to(placement.device)
    if config.compile:
        compile_layers(model)
    if processes is not None and processes.rank:
        torch.manual_seed(
            seed + processes.rank
        )  # the same start everywhere, but each its own dropout and samples
    try:
        return _train_loop(
            config,
            model,
            tokenizer,
            train_file,
            validation_file,
            out_dir,
            rng,
            on_metrics,
            progress,
            resume,
            placement,
            preloaded,
            evaluate_every,
            on_evaluation,
            reward,
            processes,
        )
    finally:
        if weights is not None:
            base.load_state_dict(weights)
        elif preloaded is not None:
            preloaded.model = model.unload()  # the adapter's layers out, the base's back in place


def _train_loop(
    config: TrainConfig,
    model: Any,
    tokenizer: Any,
    train_file: Path,
    validation_file: Path,
    out_dir: Path,
    rng: random.Random,
    on_metrics: MetricsSink | None,
    progress: bool,
    resume: bool,
    placement: Placement,
    preloaded: Preloaded | None,
    evaluate_every: int | None,
    on_evaluation: EvaluationHook | None,
    reward: Reward | None,
    processes: Processes | None,
) -> TrainResult:
    import torch
    from tqdm.auto import tqdm

    from specialize.train import checkpoint
    from specialize.train.batching import (
        PASS_TOKENS,
        computed_tokens,
        length_grouped_batches,
        packs,
        pass_tokens,
        passes,
    )
    from specialize.train.fused_lora import fused_lora
    from specialize.train.resources import check_resources, estimate_memory

    objective = objective_for(config, tokenizer.pad_token_id, reward, model)
    cache = preloaded.encoded if preloaded is not None else None
    with placement.autocast():
        train_set = _encode(
            objective, model, tokenizer, read_prepared(train_file), config.method, cache, processes
        )
        val_set = _encode(
            objective, model, tokenizer, read_prepared(validation_file), config.method, cache, processes
        )
    main, world = processes is None or processes.main, 1 if processes is None else processes.world
    sharded = processes is not None and processes.sharded
    lengths = [objective.length(e) for e in train_set]
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    n_params = sum(p.numel() for p in model.parameters())
    # SFT's rows are independent, so a long batch can run as several passes (`passes`); the other objectives
    # score pairs, groups of samples or a batch-wide reference, and a GPU's step costs launches, not memory.
    budget = PASS_TOKENS if config.method == "sft" and packs(model.config, placement.device) else None
    longest = sorted(range(len(lengths)), key=lengths.__getitem__)[-config.batch_size :]
    tokens = (
        pass_tokens([train_set[i] for i in longest], budget)
        if budget is not None
        else config.batch_size * max(lengths)  # a padded batch in one pass
    )
    fused = config.adapter == "lora" and config.lora.dropout == 0
    shards = world if sharded else 1  # FSDP: each process holds 1/world of the weights and their state
    memory = estimate_memory(
        model.config,
        n_params // shards,
        n_trainable // shards,
        tokens,
        fused,
        cpu=placement.device.type == "cpu",
    )
    check_resources(
        memory,
        disk_needed=n_trainable * 4 * (config.checkpoints.keep * 3 + 2),
        out_dir=out_dir,
        batch_size=config.batch_size,
        device=placement.device,
    )
    per_step = config.batch_size * config.gradient_accumulation * world
    steps = config.max_steps or max(1, math.ceil(config.epochs * len(train_set) / per_step))
    # The fused AdamW updates every tensor in one pass over memory instead of a dozen: on a CPU, 4 ms a step
    # instead of 18 for a rank-16 adapter of SmolLM2-135M (measured).
    optimizer = torch.optim.AdamW(
        params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
    )
    scheduler = _schedule(optimizer, steps, config.warmup_ratio)

    ckpt_dir = out_dir / "checkpoints"
    state = TrainerState(processes=world, sharded=sharded)
    last = checkpoint.latest(ckpt_dir) if resume else None
    if last is not None:
        checkpoint.check_processes(last, world, sharded)
        state = checkpoint.load(
            last, model, optimizer, scheduler, rng, 0 if processes is None else processes.rank, sharded
        )
        log.info("resuming from %s (step %d of %d)", last.name, state.step, steps)
    elif not resume and main:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    # Only rank 0 records; the others write their copies of the same figures nowhere.
    metrics_path, samples_path = (
        (out_dir / "metrics.jsonl", out_dir / SAMPLES_FILE) if main else (Path(os.devnull), Path(os.devnull))
    )
    if main:
        _truncate_metrics(metrics_path, state.step)
        _truncate_metrics(samples_path, state.step)
    model.train()
    started = time.perf_counter() - state.seconds
    last_loss = float("nan")
    stopped_early = False
    bar = tqdm(
        total=steps,
        initial=state.step,
        desc="train",
        unit="step",
        disable=not progress or not main,
        dynamic_ncols=True,
    )
    with (
        fused_lora(model),
        metrics_path.open("a", encoding="utf-8") as metrics_file,
        _Appender(samples_path) as samples_file,
    ):
        for step in range(state.step + 1, steps + 1):
            group, idle = [], []
            for _ in range(config.gradient_accumulation):
                if not state.pending_batches:
                    state.pending_batches = length_grouped_batches(lengths, config.batch_size * world, rng)
                rows = state.pending_batches.pop()
                mine = rows if processes is None else processes.shard(rows, config.batch_size)
                if mine:
                    examples = [train_set[i] for i in mine]
                    with placement.autocast():  # DPO and KTO score a reference the first time a row is drawn
                        group += [objective.collate(part) for part in passes(examples, budget)]
                elif sharded:
                    # FSDP gathers and reduces in every forward and backward pass, so a process with no rows
                    # in this batch (an epoch's short last one) runs one of its rows with weight 0 rather
                    # than leave the others waiting.
                    with placement.autocast():
                        idle.append(objective.collate([train_set[rows[0]]]))
            n_targets = sum(objective.count(b) for b in group)
            step_loss, step_tokens, step_computed = 0.0, 0, 0
            for batch in idle:
                with placement.autocast():
                    (objective.loss(model, batch) * 0).backward()
            idle.clear()
            for batch in group:
                with placement.autocast():
                    loss_sum = objective.loss(model, batch)
                # Data-parallel, the step's target count is known only once summed over the processes, with
                # the gradients: the summed loss is backpropagated, and the summed gradient divided after.
                (loss_sum / n_targets if processes is None else loss_sum).backward()
                step_loss += loss_sum.item()
                step_tokens += int(batch["attention_mask"].sum())
                step_computed += computed_tokens(batch, model.config, placement.device)
            if processes is not None:
                figures = [step_loss, n_targets, step_tokens, step_computed]
                summed = (
                    torch.tensor(processes.sum(figures))  # FSDP has summed the gradients in backward
                    if sharded
                    else processes.sum_gradients(params, torch.tensor(figures, dtype=torch.float64))
                )
                step_loss, n_targets = float(summed[0]), max(round(float(summed[1])), 1)
                step_tokens, step_computed = round(float(summed[2])), round(float(summed[3]))
                torch._foreach_div_([p.grad for p in params], float(n_targets))
            state.tokens += step_tokens
            state.computed_tokens += step_computed
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
            state.step = step
            state.seconds = time.perf_counter() - started
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{state.tokens / state.seconds:.0f}")
            record = objective.drain()
            samples_file.write(step, record.samples)
            row: dict[str, float] = {}
            if step % config.log_every == 0 or step == steps:
                row = {
                    "loss": last_loss,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "tokens_per_second": state.tokens / state.seconds,
                    "tokens": state.tokens,
                    **record.figures,
                }
            stop = config.early_stopping
            if stop is not None and (step % stop.eval_every == 0 or step == steps):
                with placement.autocast():
                    # FSDP: every process runs the model's passes together
                    row["validation_loss"] = (
                        objective.validation(model, val_set) if main or sharded else math.nan
                    )
                if processes is not None:  # rank 0's figure, so that every process stops at the same step
                    row["validation_loss"] = processes.from_main(row["validation_loss"])
                stopped_early = _track_best(
                    model, tokenizer, out_dir, state, row["validation_loss"], stop, processes
                )
            if row and main:
                metrics_file.write(json.dumps({"step": step, **row}) + "\n")
                metrics_file.flush()
                if on_metrics:
                    on_metrics(step, row)
            if on_evaluation is not None and evaluate_every and (step % evaluate_every == 0 or step == steps):
                model.eval()
                with placement.autocast():
                    on_evaluation(step, model)
                model.train()
            if stopped_early:
                log.info(
                    "early stopping at step %d: validation loss did not improve for %d evaluations",
                    step,
                    stop.patience if stop else 0,
                )
                break
            if step % config.checkpoints.every == 0 and step < steps:
                rngs = None if processes is None else processes.gather(checkpoint.rng_states())
                full = checkpoint.full_states(model, optimizer) if sharded else None  # every process gathers
                if main:
                    checkpoint.save(
                        ckpt_dir, model, optimizer, scheduler, rng, state, config.checkpoints.keep, rngs, full
                    )
    bar.close()
    best = out_dir / ".best"
    promote = config.early_stopping is not None and best.exists()
    if sharded:  # rank 0's disk decides; every process gathers the weights or none does
        promote = processes.from_main(promote)  # type: ignore[union-attr]
        val_loss = math.nan
        if not promote:
            with placement.autocast():
                val_loss = objective.validation(model, val_set)
            _save_weights(model, tokenizer, out_dir / "model", processes)
    if not main:  # rank 0 validates and saves the weights every process holds
        return TrainResult(
            out_dir,
            config.adapter is not None,
            state.step,
            state.tokens,
            state.seconds,
            last_loss,
            math.nan,
            state.computed_tokens,
            config.method,
            world,
        )
    if promote:
        output = _promote(best, out_dir, adapter=config.adapter is not None)
        val_loss = state.best_validation_loss if state.best_validation_loss is not None else float("nan")
    elif sharded:
        output = out_dir / "model"  # saved above, with every process
    else:
        with placement.autocast():
            val_loss = objective.validation(model, val_set)
        output = _save_atomic(
            model, tokenizer, out_dir / ("adapter" if config.adapter is not None else "model")
        )
    if on_metrics:
        on_metrics(state.step, {"validation_loss": val_loss})
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log.info(
        "trained %d steps, %d tokens in %.0f s (%.0f tokens/s)",
        state.step,
        state.tokens,
        state.seconds,
        state.tokens / max(state.seconds, 1e-9),
    )
    result = TrainResult(
        output,
        config.adapter is not None,
        state.step,
        state.tokens,
        state.seconds,
        last_loss,
        val_loss,
        state.computed_tokens,
        config.method,
        world,
        memory.total,
    )
    result.save(out_dir / RESULT_FILE)
    return result


def _encode(
    objective: Any,
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    method: str,
    cache: dict[str, Any] | None,
    processes: Processes | None = None,
) -> list[Any]:
    """The rows as the objective's examples; with a cache, only rows not encoded before are.

    Data-parallel, each process tokenizes every n-th row and all of them receive every example: batches are drawn
    from the whole set by every process alike (and each scores DPO's reference for the rows of its own shards).
    """
    if processes is not None:
        mine = _encode(objective, model, tokenizer, rows[processes.rank :: processes.world], method, cache)
        shares = processes.gather(mine)
        return [shares[i % processes.world][i // processes.world] for i in range(len(rows))]
    if cache is None:
        return list(objective.encode(model, tokenizer, rows))
    keys = [method + "\n" + json.dumps(row, sort_keys=True) for row in rows]
    missing = {key: row for key, row in zip(keys, rows, strict=True) if key not in cache}
    if missing:
        encoded = objective.encode(model, tokenizer, list(missing.values()))
        cache.update(zip(missing, encoded, strict=True))
    return [cache[key] for key in keys]


def _track_best(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    state: TrainerState,
    loss: float,
    stop: EarlyStoppingConfig,
    processes: Processes | None,
) -> bool:
    """Keep the weights of the best validation loss in `out_dir/.best` (written by rank 0 of several
    processes); True when patience has run out."""
    if state.best_validation_loss is None or loss < state.best_validation_loss - stop.min_delta:
        state.best_validation_loss = loss
        state.evals_without_improvement = 0
        _save_weights(model, tokenizer, out_dir / ".best", processes)
        return False
    state.evals_without_improvement += 1
    return state.evals_without_improvement >= stop.patience


def _promote(best: Path, out_dir: Path, adapter: bool) -> Path:
    target = out_dir / ("adapter" if adapter else "model")
    if target.exists():
        shutil.rmtree(target)
    best.rename(target)
    return target


class _Appender:
    """`samples.jsonl`, opened on the first rows written: offline methods leave no empty file behind."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: Any = None

    def __enter__(self) -> _Appender:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()

    def write(self, step: int, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.file is None:
            self.file = self.path.open("a", encoding="utf-8")
        self.file.write("".join(json.dumps({"step": step, **r}, ensure_ascii=False) + "\n" for r in rows))
        self.file.flush()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows (metrics, samples) logged after `step`: a resumed run logs those steps again."""
    if not path.exists():
        return
    keep = [
        line for line in path.read_text(encoding="utf-8").splitlines() if json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def _prepare_model(model: Any, config: TrainConfig, scalar_head: bool = False) -> Any:
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
        # PEFT's sequence-classification task trains and saves a reward model's head beside the adapter.
        task_type="SEQ_CLS" if scalar_head else "CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def _schedule(optimizer: Any, steps: int, warmup_ratio: float) -> Any:
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, round(steps * warmup_ratio), steps)


def _save_weights(model: Any, tokenizer: Any, target: Path, processes: Processes | None) -> None:
    """`_save_atomic` by rank 0; under FSDP every process gathers the whole weights for it first."""
    from specialize.train.distributed import full_state

    weights = full_state(model) if processes is not None and processes.sharded else None
    if processes is None or processes.main:
        _save_atomic(model, tokenizer, target, weights)


def _save_atomic(model: Any, tokenizer: Any, target: Path, weights: dict[str, Any] | None = None) -> Path:
    """Save into a temporary sibling, then rename: a crash never leaves half-written weights. `weights`: the
    whole state dict of a sharded model, gathered on this process."""
    staging = target.with_name(f".{target.name.lstrip('.')}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, state_dict=weights)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
