"""A LoRA linear layer whose adapter product is accumulated into the frozen layer's output in place.

PEFT computes `base(x) + lora_B(lora_A(x)) * scaling`: the adapter's output is built at the layer's full
width, multiplied by the scale, then added, and autograd mirrors each of those passes in the backward pass
(a scaled copy of the gradient, a separate sum of the two input gradients). On a CPU these element-wise
passes over (tokens x width) tensors are memory-bound and cost about as much as the small adapter matmuls
themselves: in a SmolLM2-135M step they were a tenth of the time. Here the scale is applied to the
rank-wide product and BLAS adds `scale * (x A^T) B^T` straight into the base output (and, backward,
`scale * (g B) A` into the input gradient), so no full-width temporary is made.

Only the plain case is fused: one active LoRA adapter, no dropout, not merged, not DoRA, adapters enabled.
Anything else runs PEFT's own forward unchanged, so DoRA, dropout, the disabled-adapter reference pass of
DPO and mixed-adapter batches behave exactly as before.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class _LoraLinear(torch.autograd.Function):
    """y = x W^T + b + scale * (x A^T) B^T with W and b frozen; gradients for x, A and B.

    Every product runs in `dtype` (the autocast dtype under autocast, as PEFT's layers would; else the
    tensors' own); autograd casts the gradients back to the dtype of each input.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(dtype)
        weight, lora_a, lora_b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        low = flat @ lora_a.t()
        out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
        out.addmm_(low, lora_b.t(), alpha=scale)
        ctx.save_for_backward(flat, weight, lora_a, lora_b, low)
        ctx.scale = scale
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        flat, weight, lora_a, lora_b, low = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(flat.dtype)
        g_low = g @ lora_b
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).addmm_(g_low, lora_a, alpha=ctx.scale)
            grad_x = grad_x.view(*grad.shape[:-1], flat.shape[-1])
        grad_a = (g_low.t() @ flat).mul_(ctx.scale)
        grad_b = (g.t() @ low).mul_(ctx.scale)
        return grad_x, None, None, grad_a, grad_b, None, None


def _forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """Replaces a PEFT LoRA Linear's `forward`: the fused path where it applies, PEFT's otherwise."""
    names = self.active_adapters
    autocast = torch.is_autocast_enabled(x.device.type)
    if (
        kwargs.get("adapter_names") is None
        and not self.disable_adapters
        and not self.merged
        and len(names) == 1
    ):
        name = names[0]
        base = self.base_layer
        if (
            name in self.lora_A
            and name not in self.lora_variant  # DoRA and other variants
            and isinstance(base, nn.Linear)
            and not self.fan_in_fan_out
            and self.lora_B[name].bias is None
            and isinstance(self.lora_dropout[name], nn.Identity)
            and not base.weight.requires_grad
            and (base.bias is None or not base.bias.requires_grad)
            and (autocast or x.dtype == base.weight.dtype == self.lora_A[name].weight.dtype)
        ):
            return _LoraLinear.apply(
                x,
                base.weight,
                base.bias,
                self.lora_A[name].weight,
                self.lora_B[name].weight,
                self.scaling[name],
                torch.get_autocast_dtype(x.device.type) if autocast else x.dtype,
            )
    return type(self).forward(self, x, *args, **kwargs)


@contextmanager
def fused_lora(model: nn.Module) -> Iterator[int]:
    """Within the block, the LoRA Linear layers of `model` use the fused path; yields how many were switched."""
    from peft.tuners.lora.layer import Linear

    layers = [m for m in model.modules() if isinstance(m, Linear)]
    for layer in layers:
        layer.forward = types.MethodType(_forward, layer)  # type: ignore[method-assign]  # shadows the class method
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward
