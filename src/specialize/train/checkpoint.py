"""Checkpoints that survive a crash: written whole or not at all, and enough to continue bit-for-bit.

A checkpoint holds the trainable weights (safetensors), the optimizer and scheduler state, the RNG states and the
rest of the epoch's batch order, so a run killed at any instant (SIGKILL included) continues from its last
checkpoint to the same weights as an uninterrupted run. Each is written to a hidden `.partial` folder and renamed
into place: a folder named `step-N` is always complete.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "step-"


@dataclass
class TrainerState:
    """Where the loop is: everything besides weights and optimizer needed to continue."""

    step: int = 0
    tokens: int = 0
    computed_tokens: int = 0
    seconds: float = 0.0
    pending_batches: list[list[int]] = field(default_factory=list)
    best_validation_loss: float | None = None
    evals_without_improvement: int = 0
    processes: int = 1  # of a data-parallel run: the global batch, and so the schedule, depend on it
    sharded: bool = False  # written under FSDP: the optimizer state is keyed by parameter name, not position


def latest(directory: Path) -> Path | None:
    """The most recent complete checkpoint in `directory`, if any."""
    found = sorted(directory.glob(f"{PREFIX}*"), key=lambda p: int(p.name.removeprefix(PREFIX)))
    return found[-1] if found else None


def save(
    directory: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    rng: random.Random,
    state: TrainerState,
    keep: int,
    process_rngs: list[dict[str, Any]] | None = None,
    full: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint of step `state.step` atomically and keep only the newest `keep`.

    `process_rngs` are the RNG states of every process of a data-parallel run (`rng_states()` of each, in rank
    order), written by rank 0 alone; a process alone saves its own. `full`: the weights and optimizer state
    of a model sharded with FSDP, gathered whole (`full_states`), written instead of the model's own shards.
    """
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{state.step:06d}"
    staging = directory / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    weights, optimizer_state = full or ({}, optimizer.state_dict())
    # named_parameters names a tied weight once, where a state dict names it twice (safetensors refuses that)
    trainable = {
        n: (weights[n] if full else p).detach().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    save_file(trainable, staging / "trainable.safetensors")
    torch.save(
        {
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            **rng_states(),
            "process_rngs": process_rngs or [],
        },
        staging / "optimizer.pt",
    )
    doc = {**state.__dict__, "python_rng": _rng_to_json(rng)}
    (staging / "state.json").write_text(json.dumps(doc), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in sorted(directory.glob(f"{PREFIX}*"), key=lambda p: int(p.name.removeprefix(PREFIX)))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def full_states(model: Any, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model sharded with FSDP: its whole weights and optimizer state, on the CPU of rank 0 (empty
    elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from specialize.train.distributed import full_state

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return full_state(model), get_optimizer_state_dict(model, optimizer, options=options)


def check_processes(path: Path, processes: int, sharded: bool = False) -> None:
    """Refuse to continue a checkpoint with another number of data-parallel processes than wrote it (the global
    batch, and so the schedule and the batch order, depend on it), or with FSDP on where it was off or the
    reverse (the optimizer state is laid out differently).

    Raises:
        TrainingError: naming the number to resume with, or the FSDP setting.
    """
    from specialize.errors import TrainingError

    doc = json.loads((path / "state.json").read_text(encoding="utf-8"))
    wrote = doc.get("processes", 1)
    if doc.get("sharded", False) != sharded:
        on = "with FSDP" if doc.get("sharded", False) else "without FSDP"
        raise TrainingError(
            f"{path} was written {on} and this resume is {'with' if sharded else 'without'} it; resume {on} "
            "(ACCELERATE_USE_FSDP=" + ("true" if doc.get("sharded", False) else "false") + ")"
        )
    if wrote != processes:
        raise TrainingError(
            f"{path} was written by {wrote} training process(es) and this resume has {processes}: the global "
            f"batch and the schedule depend on it; resume with --processes {wrote}"
        )


def rng_states() -> dict[str, Any]:
    """This process's torch RNG states (CPU and CUDA): dropout and sampling continue where they were."""
    import torch

    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def load(
    path: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    rng: random.Random,
    rank: int = 0,
    sharded: bool = False,
) -> TrainerState:
    """Restore weights, optimizer, scheduler and RNGs (process `rank`'s, in a data-parallel run) from a
    checkpoint; return the loop state. `sharded`: the model is sharded with FSDP, and each process takes its
    own shards of the whole weights and optimizer state the checkpoint holds."""
    import torch
    from safetensors.torch import load_file

    weights: dict[str, Any] = load_file(path / "trainable.safetensors")
    # Onto the CPU first: the optimizer moves its state to its parameters' device, so a run checkpointed on
    # a GPU resumes on a machine without one.
    extra = torch.load(path / "optimizer.pt", weights_only=False, map_location="cpu")
    if sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, strict=False)  # a tied weight is saved once
        set_model_state_dict(model, weights, options=options)
        set_optimizer_state_dict(model, optimizer, extra["optimizer"], options=options)
    else:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    rngs = extra.get("process_rngs") or [extra]
    own = rngs[rank] if rank < len(rngs) else extra
    torch.set_rng_state(own["torch_rng"])
    if own.get("cuda_rng") and torch.cuda.device_count() == len(own["cuda_rng"]):
        torch.cuda.set_rng_state_all(own["cuda_rng"])
    doc = json.loads((path / "state.json").read_text(encoding="utf-8"))
    rng.setstate(_rng_from_json(doc.pop("python_rng")))
    return TrainerState(**doc)


def _rng_to_json(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from_json(doc: list[Any]) -> tuple[Any, ...]:
    return (doc[0], tuple(doc[1]), doc[2])
