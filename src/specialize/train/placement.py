"""Where training runs and in which precision: the CPU in float32, or a CUDA GPU under bfloat16 autocast.

On a CPU without bfloat16 units (most laptops and CI machines) float32 is the fast path: bfloat16 matrix
products there run many times slower. On a GPU with bfloat16 tensor cores the same products run an order of
magnitude faster than float32, so `auto` picks bfloat16 autocast there: the weights, their gradients and the
optimizer state stay float32 (the master copy every step updates), only the products run in bfloat16. That
also needs no loss scaling, unlike float16, which is why float16 is not offered. On a GPU, `train.compile`
also compiles the decoder layers (`compile_layers`), where a small model's step is bound by kernel launches.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from specialize.config import TrainDevice, TrainPrecision
from specialize.errors import ConfigError, ResourceError


@dataclass(frozen=True)
class Placement:
    """The device of a training run and the dtype its matrix products run in under autocast (None: float32)."""

    device: torch.device
    autocast_dtype: torch.dtype | None

    def autocast(self) -> AbstractContextManager[None]:
        """The autocast block forward passes run in; a no-op in float32."""
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        )

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"{name}, {'float32' if self.autocast_dtype is None else 'bfloat16 autocast'}"


def check_compile(enabled: bool, placement: Placement) -> None:
    """Refuse `train.compile` where training does not run on a CUDA GPU (`train.device: auto` on a machine
    without one).

    On a CPU the step is bound by arithmetic, not kernel launches, and its batches run as one packed pass whose
    shape changes with every batch (a recompilation each time); the option is for the GPU, where a small model
    spends most of a step launching kernels.

    Raises:
        ConfigError: naming the device and the fix.
    """
    if enabled and placement.device.type != "cuda":
        raise ConfigError(
            f"train.compile compiles for a CUDA GPU and training runs on {placement.device.type} here; set "
            "train.compile to false, e.g. --set train.compile=false"
        )


def compile_layers(model: Any) -> None:
    """torch.compile each decoder layer of a causal LM (or of the PEFT model around one), in place.

    The layers, not the whole model: the objectives call the decoder's parts directly (`batching.target_losses`),
    and the output projection runs on the target positions only, a shape known only from the data (a graph
    break). A layer is the repeated unit where a small model's step spends its kernel launches, its dozens of
    element-wise operations fused into a few kernels. Batch widths change from batch to batch, so after the
    second width torch compiles a graph with a dynamic length rather than one per width.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.get_decoder().layers:
        layer.compile()


def choose_placement(device: TrainDevice, precision: TrainPrecision) -> Placement:
    """Resolve `train.device` and `train.precision`; a GPU asked for but absent is an error, not a silent CPU run."""
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ResourceError(
            "train.device is cuda but PyTorch sees no CUDA GPU (a CPU-only PyTorch build, or no driver); set "
            "train.device to auto or cpu"
        )
    chosen = torch.device("cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu")
    if precision == "float32" or (chosen.type == "cpu" and precision == "auto"):
        return Placement(chosen, None)
    if chosen.type == "cpu" or torch.cuda.is_bf16_supported(including_emulation=False):
        return Placement(chosen, torch.bfloat16)
    if precision == "bfloat16":
        raise ResourceError(
            f"train.precision is bfloat16 but {torch.cuda.get_device_name(chosen)} has no bfloat16 units; set "
            "train.precision to auto or float32"
        )
    return Placement(chosen, None)
