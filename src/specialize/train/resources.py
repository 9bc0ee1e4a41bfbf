"""Will it fit? Memory and disk needed by a training run, checked before the first step.

The estimate: the Python process with torch and transformers imported, float32 weights, gradients and AdamW
moments of the trainable weights, and the activations kept for the backward pass of the largest pass. With the
fused LoRA path (`fused_lora.py`: plain LoRA, no dropout, a gated MLP whose product is recomputed, the head's
loss by chunks) a token keeps about 4 x hidden + 3 x query width + 2 x key-value width + 2 x intermediate floats
a layer (the residual stream and norm outputs twice, attention's query, key, value and output, the output
projection's input, the MLP's gate and up); anything else keeps PEFT's and transformers' own, measured at about
16 x hidden + 5 x intermediate for Llama-style blocks. The allocator's hold on memory freed between passes of
different sizes comes on top, about as much again as the live activations (measured, below). Failing here, with
the numbers and the setting to change, beats an out-of-memory kill an hour in.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.errors import ResourceError

GIB = 2**30


# Resident memory of Python with torch, transformers and PEFT imported, before the model (392 MiB measured).
RUNTIME = 400 * 2**20
# Peak resident memory over the live activations of the largest pass: glibc's allocator keeps the memory of
# freed activations for reuse, and passes of different sizes fragment it. Measured on SmolLM2-135M at batch 8:
# GSM8K (passes of up to 1,476 tokens) and legal_unfair_tos (one pass of about 1,000 computed tokens).
HELD = 2.0


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed by each part of a training step."""

    weights: int
    optimizer: int
    activations: int
    runtime: int = RUNTIME

    @property
    def total(self) -> int:
        return self.runtime + self.weights + self.optimizer + self.activations

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, gradients and optimizer "
            f"{self.optimizer / GIB:.1f}, activations {self.activations / GIB:.1f}, Python and libraries "
            f"{self.runtime / GIB:.1f})"
        )


def activation_floats(model_config: Any, fused: bool) -> int:
    """Floats a token keeps for the backward pass, summed over the layers (see the module's docstring)."""
    hidden = model_config.hidden_size
    intermediate = getattr(model_config, "intermediate_size", None) or 4 * hidden
    layers = model_config.num_hidden_layers
    if not fused:
        return (16 * hidden + 5 * intermediate) * layers
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    return (4 * hidden + 3 * heads * head_dim + 2 * kv_heads * head_dim + 2 * intermediate) * layers


def estimate_memory(
    model_config: Any, n_params: int, n_trainable: int, tokens: int, fused: bool, cpu: bool = True
) -> MemoryEstimate:
    """Peak memory of float32 training whose largest forward and backward pass computes `tokens` tokens.

    Args:
        model_config: the model's config (sizes of the layers).
        n_params: every parameter of the model, adapter included.
        n_trainable: the parameters that get gradients and AdamW moments.
        tokens: tokens computed by the largest pass (`batching.pass_tokens`).
        fused: whether the fused LoRA path runs (plain LoRA without dropout), which keeps fewer activations.
        cpu: the process's memory on a CPU; on a GPU, the device's (no Python runtime there, and PyTorch's
            caching allocator, not glibc's, holds freed blocks).
    """
    activations = activation_floats(model_config, fused) * 4 * tokens
    if not cpu:
        return MemoryEstimate(n_params * 4, n_trainable * 4 * 3, activations, runtime=0)
    return MemoryEstimate(n_params * 4, n_trainable * 4 * 3, int(activations * HELD))


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
