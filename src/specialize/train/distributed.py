"""Data-parallel training: the processes of one run, as `torchrun`, `accelerate launch` or `specialize run
--processes N` start them, and what the training loop exchanges between them.

The process group is accelerate's (`Accelerator` reads the launcher's environment: gloo between CPU processes,
NCCL between GPUs, one GPU per process); nothing here opens sockets or picks ports. A process alone (no
`WORLD_SIZE`, or 1) never creates an `Accelerator` and trains exactly as before.

What the loop exchanges, and why by hand rather than through `DistributedDataParallel`: DDP synchronises
gradients from hooks armed by its own `forward`, but the objectives call into the model's parts directly (the
packed decoder pass and the projection of target positions only, DPO's reference pass with the adapter off,
generation for the on-policy methods), so a DDP wrapper would see no forward and silently skip the sync. The
loop instead sums each step's gradients once over all processes (`sum_gradients`, a few buckets, after the whole
accumulated step), together with the step's loss and token counts: one collective a step, whatever the method.

Under an accelerate FSDP launch, full fine-tuning shards the model instead (`shard_model`): FSDP's hooks sit on
the forward of each part the objectives call, gather its weights there and reduce-scatter its gradients in
backward, so the loop sums only the step's figures, and every process runs every pass (validation and saving
included, which gather the weights).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

from specialize.errors import ConfigError, TrainingError

if TYPE_CHECKING:
    import torch

    from specialize.config import TrainConfig

# How long a collective waits for a process that stopped answering before it raises (torch's own default for
# gloo). Rank 0 prepares the data and loads the model while the others wait for the training job, so this must
# cover data preparation; a process that dies is noticed at once on one machine (the launcher's agent stops the
# others) and by gloo when the peer's socket closes; the timeout is the last resort for a peer that hangs.
TIMEOUT = timedelta(minutes=30)
BUCKET = 1 << 24  # elements of one gradient all-reduce: 64 MB of float32, bounded extra memory for full FT


def launched() -> bool:
    """Whether this process is one of several of a run (started by torchrun, accelerate launch or --processes)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank (0 alone): known from the launcher's environment before any process group exists."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class Processes:
    """The processes of a data-parallel run, seen from one of them."""

    rank: int
    world: int
    local_rank: int
    device: torch.device  # this process's device: cuda:LOCAL_RANK on GPUs, the CPU otherwise
    sharded: bool = False  # FSDP: each process holds a shard of the weights, and FSDP sums the gradients

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics, weights, the registry and the report."""
        return self.rank == 0

    def shard(self, batch: Sequence[int], per_process: int) -> list[int]:
        """This process's contiguous slice of a global batch (neighbours in a length-grouped batch have similar
        lengths, so a slice pads little); the last, short batch of an epoch may leave a process an empty one."""
        return list(batch[self.rank * per_process : (self.rank + 1) * per_process])

    def sum_gradients(self, params: Sequence[torch.Tensor], extra: torch.Tensor) -> torch.Tensor:
        """Sum every parameter's gradient over the processes, in place, and `extra` (a step's loss and counts)
        with them, in the first bucket: one collective a step for an adapter. Returns the summed `extra`.

        A parameter without a gradient (a process with no rows in this step) contributes zeros.
        """
        import torch
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        summed = extra
        for i, bucket in enumerate(_buckets([g.numel() for g in grads])):
            parts = [grads[j].reshape(-1).to(self.device, torch.float32) for j in bucket]
            if i == 0:
                parts.append(extra.to(self.device, torch.float32))
            flat = torch.cat(parts)
            with self._collective():
                dist.all_reduce(flat)
            offset = 0
            for j in bucket:
                n = grads[j].numel()
                params[j].grad = flat[offset : offset + n].view_as(grads[j]).to(grads[j].dtype)
                offset += n
            if i == 0:
                summed = flat[offset:]
        return summed.to("cpu", torch.float64)

    def sum(self, values: Sequence[float]) -> list[float]:
        """`values` summed over the processes (e.g. target counts, before a step's backward pass)."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        with self._collective():
            dist.all_reduce(tensor)
        return tensor.tolist()

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value`, on every process (a picklable object)."""
        import torch.distributed as dist

        box = [value if self.main else None]
        with self._collective():
            dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order, on every process."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        with self._collective():
            dist.all_gather_object(out, value)
        return out

    @contextmanager
    def _collective(self) -> Iterator[None]:
        """A collective that fails because a peer is gone (it raised, or was killed) ends this process with one
        line, not a backend traceback: the peer's own error, if it had one, says what went wrong."""
        try:
            yield
        except RuntimeError as exc:  # torch.distributed's DistBackendError and gloo's errors among them
            # gloo's first sentence, without the source location it starts with: "Connection closed by peer ..."
            first = re.sub(r"^\[[^\]]*\]\s*", "", (str(exc) or type(exc).__name__).splitlines()[0])
            reason = first.split(". ")[0]
            raise TrainingError(
                f"process {self.rank} of {self.world}: another training process stopped answering ({reason}); "
                "its own error, if it printed one, is above"
            ) from exc


def _buckets(sizes: list[int]) -> Iterator[list[int]]:
    """Indices of consecutive tensors, about `BUCKET` elements a group; always at least one (maybe empty) group."""
    bucket: list[int] = []
    total = 0
    for i, n in enumerate(sizes):
        if bucket and total + n > BUCKET:
            yield bucket
            bucket, total = [], 0
        bucket.append(i)
        total += n
    yield bucket


def current() -> Processes | None:
    """The processes of this run, the process group started on first use; None for a process alone."""
    return _start() if launched() else None


def check_engine(environ: Mapping[str, str]) -> bool:
    """Whether the accelerate config asks to shard the model with FSDP; refuse DeepSpeed ZeRO.

    DeepSpeed takes the model, the optimizer and the backward pass into its own engine (`engine.backward`,
    `engine.step`), so the loop's own accumulation, clipping and schedule would have to go through it, and its
    CPU backend needs Intel's oneCCL: nothing here could run or test it. FSDP2 (`shard_model`) shards the same
    model with hooks on each part's own forward, which the objectives do call.

    Raises:
        ConfigError: a DeepSpeed config, naming what to use instead.
    """
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ConfigError(
            "the accelerate config asks for DeepSpeed ZeRO (ACCELERATE_USE_DEEPSPEED=true), which specialize "
            "does not drive; for a model that does not fit one device use an FSDP config (distributed_type: "
            "FSDP), else a multi-GPU one (distributed_type: MULTI_GPU), `torchrun`, or `specialize run "
            "--processes N`"
        )
    return environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_sharding(config: TrainConfig) -> None:
    """Refuse what FSDP does not train here: an adapter, and methods other than SFT.

    FSDP is for weights, gradients and optimizer state that do not fit one device, which is full fine-tuning:
    an adapter's base is only read and its own state is small, so it trains data-parallel without sharding.
    The other methods call the model in ways (generation, a scalar head, a reference pass with the adapter off)
    that no test here runs under FSDP, so they are refused rather than run untested.

    Raises:
        ConfigError: naming the setting and the fix.
    """
    if config.adapter is not None:
        raise ConfigError(
            f"FSDP (ACCELERATE_USE_FSDP=true) shards full fine-tuning; train.adapter is {config.adapter}: set "
            "train.adapter to null, or launch without FSDP (an adapter trains data-parallel with a full copy of "
            "the base model in each process)"
        )
    if config.method != "sft":
        raise ConfigError(
            f"FSDP (ACCELERATE_USE_FSDP=true) trains train.method sft only (got {config.method}); set "
            "train.method to sft, or launch without FSDP"
        )


def shard_model(model: Any, processes: Processes) -> None:
    """Shard a causal LM's parameters, gradients and optimizer state over the processes with FSDP2, in place.

    Called on `fully_shard` directly rather than through accelerate's FSDP plugin: the plugin wraps the
    transformer layers and the root model, whose forward hooks gather the root's own parameters (embeddings,
    final norm, output projection), but the objectives never call the root's forward: they call the decoder
    and then the output projection on the target positions only (`batching.target_losses`). So each decoder
    layer is its own group, and every other module that owns parameters (the embeddings, the final norm, the
    output projection, tied or not) joins one group whose hooks sit on each member's forward, gathered when the
    first runs and freed after the last. The decoder is the root, called first in every step. Gradients are
    reduce-scattered as sums (the loop divides by the step's summed target count), not FSDP's default mean.
    """
    import torch
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    layers = list(getattr(decoder, "layers", []))
    if not layers:
        raise ConfigError(
            f"FSDP needs the decoder's layers as `.layers`, which {type(decoder).__name__} lacks; launch "
            "without FSDP"
        )
    mesh = torch.distributed.device_mesh.init_device_mesh(processes.device.type, (processes.world,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    inside = {id(p) for layer in layers for p in layer.parameters()}
    rest = [m for m in base.modules() if any(id(p) not in inside for p in m.parameters(recurse=False))]
    fully_shard(rest, mesh=mesh)
    fully_shard(decoder, mesh=mesh)
    for module in base.modules():
        if hasattr(module, "set_gradient_divide_factor"):
            module.set_gradient_divide_factor(1.0)
            # a plain SUM: a factor of 1 would otherwise be NCCL's pre-multiplied sum, which gloo lacks
            module.set_force_sum_reduction_for_comms(True)


def full_state(model: Any) -> dict[str, Any]:
    """A sharded model's whole state dict, on the CPU of rank 0 (empty elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # A tied weight (the output projection of SmolLM2) is one parameter under two names in a state dict;
    # named_parameters names it once, as `save_pretrained` writes it for a model that is not sharded.
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {k: v for k, v in full.items() if k in names}


@cache
def _start() -> Processes:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    sharded = check_engine(os.environ)
    # accelerate picks NCCL when CUDA is present and needs `cpu=True` for gloo between CPU processes.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), kwargs_handlers=[InitProcessGroupKwargs(timeout=TIMEOUT)]
    )
    state = accelerator.state
    return Processes(
        state.process_index,
        state.num_processes,
        state.local_process_index,
        torch.device(state.device),
        sharded,
    )


def check_device(processes: Processes, device: torch.device) -> None:
    """Refuse a CPU run on GPUs: the process group there is NCCL's, which cannot sum CPU tensors.

    Raises:
        ConfigError: `train.device: cpu` with several processes on a machine with CUDA.
    """
    if processes.device.type != device.type:
        raise ConfigError(
            f"train.device asks for {device.type} but the {processes.world} processes run on "
            f"{processes.device.type} (accelerate's choice on this machine); set train.device to auto, or "
            "train on one process"
        )
