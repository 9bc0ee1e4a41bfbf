"""Will it fit? Memory and disk needed by a training run, checked before the first step.

The estimate is deliberately simple and errs high: float32 weights, gradients and AdamW moments of the trainable
weights, and activations kept for the backward pass, measured at about (16 x hidden + 5 x intermediate) floats per
token per layer for Llama-style blocks in float32 (SmolLM2-135M at batch 8 x 154 tokens: 3.3 GB measured, 3.0 GB
estimated). Failing here, with the numbers and the setting to change, beats an out-of-memory kill an hour in.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.errors import ResourceError

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed by each part of a training step."""

    weights: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.activations

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, gradients and optimizer "
            f"{self.optimizer / GIB:.1f}, activations {self.activations / GIB:.1f})"
        )


def estimate_memory(
    model_config: Any, n_params: int, n_trainable: int, batch_size: int, max_len: int
) -> MemoryEstimate:
    """Peak memory of one float32 training step on the longest batch."""
    hidden = model_config.hidden_size
    intermediate = getattr(model_config, "intermediate_size", 4 * hidden)
    layers = model_config.num_hidden_layers
    per_token = (16 * hidden + 5 * intermediate) * layers * 4
    return MemoryEstimate(n_params * 4, n_trainable * 4 * 3, per_token * batch_size * max_len)


def available_memory() -> int:
    """Memory the process can still take: MemAvailable on Linux, else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_gpu_memory(device: Any) -> int:
    """Free memory of a CUDA device, as the driver reports it (other processes' use counted)."""
    import torch

    return int(torch.cuda.mem_get_info(device)[0])


def check_resources(
    estimate: MemoryEstimate, disk_needed: int, out_dir: Path, batch_size: int, device: Any
) -> None:
    """Raise ResourceError, before training starts, when memory (GPU memory on a GPU) or disk is short."""
    on_gpu = device.type == "cuda"
    free_memory = available_gpu_memory(device) if on_gpu else available_memory()
    if estimate.total > free_memory:
        where = f"GPU memory on {device}" if on_gpu else "memory"
        raise ResourceError(
            f"training needs about {estimate.describe()} of {where}, {free_memory / GIB:.1f} GiB available; lower "
            f"train.batch_size (e.g. --set train.batch_size={max(1, batch_size // 2)} with "
            f"train.gradient_accumulation doubled) or data.max_tokens"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(out_dir).free
    if disk_needed > free_disk:
        raise ResourceError(
            f"training needs about {disk_needed / GIB:.1f} GiB of disk in {out_dir} for weights and checkpoints, "
            f"{free_disk / GIB:.1f} GiB free; free some disk or lower train.checkpoints.keep"
        )
