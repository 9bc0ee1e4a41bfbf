"""A LoRA linear layer whose adapter product is accumulated into the frozen layer's output in place.

PEFT computes `base(x) + lora_B(lora_A(x)) * scaling`: the adapter's output is built at the layer's full
width, multiplied by the scale, then added, and autograd mirrors each of those passes in the backward pass
(a scaled copy of the gradient, a separate sum of the two input gradients). On a CPU these element-wise
passes over (tokens x width) tensors are memory-bound and cost about as much as the small adapter matmuls
themselves: in a SmolLM2-135M step they were a tenth of the time. Here the scale is applied to the
rank-wide product and BLAS adds `scale * (x A^T) B^T` straight into the base output (and, backward,
`scale * (g B) A` into the input gradient), so no full-width temporary is made.

A gated MLP (down(act(gate(x)) * up(x)), Llama's and its kin's) whose three projections are such layers runs
as one function, which keeps only x, gate and up for the backward pass (`_LoraMLP`).

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


class _LoraMLP(torch.autograd.Function):
    """down(act(gate(x)) * up(x)) with three frozen LoRA Linear layers; gradients for x and the six adapters.

    Keeps x, gate(x) and up(x) for the backward pass and recomputes act(gate) * up there: saving the
    activation's output, the product and the down projection's input as well would double the MLP's share of
    a step's memory (3 x intermediate floats a token a layer; for SmolLM2-135M, 1.1 GB at batch 8 on GSM8K),
    and one more element-wise pass costs far less than a matrix product. The activation's gradient comes from
    autograd on the recomputed product, so any activation function works.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        act: nn.Module,
        scales: tuple[float, float, float],
        dtype: torch.dtype,
        *weights: torch.Tensor,
    ) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(dtype)
        wg, ag, bg, wu, au, bu, wd, ad, bd = (w.to(dtype) for w in weights)
        sg, su, sd = scales
        low_g, low_u = flat @ ag.t(), flat @ au.t()
        gate = (flat @ wg.t()).addmm_(low_g, bg.t(), alpha=sg)
        up = (flat @ wu.t()).addmm_(low_u, bu.t(), alpha=su)
        hidden = act(gate).mul_(up)
        low_d = hidden @ ad.t()
        out = (hidden @ wd.t()).addmm_(low_d, bd.t(), alpha=sd)
        ctx.save_for_backward(flat, gate, up, low_g, low_u, low_d, wg, ag, bg, wu, au, bu, wd, ad, bd)
        ctx.act, ctx.scales = act, scales
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        flat, gate, up, low_g, low_u, low_d, wg, ag, bg, wu, au, bu, wd, ad, bd = ctx.saved_tensors
        sg, su, sd = ctx.scales
        g = grad.reshape(-1, grad.shape[-1]).to(flat.dtype)
        with torch.enable_grad():
            gate, up = gate.detach().requires_grad_(), up.detach().requires_grad_()
            hidden = ctx.act(gate) * up
        g_low_d = g @ bd
        grad_ad = (g_low_d.t() @ hidden.detach()).mul_(sd)
        grad_bd = (g.t() @ low_d).mul_(sd)
        d_hidden = (g @ wd).addmm_(g_low_d, ad, alpha=sd)
        d_gate, d_up = torch.autograd.grad(hidden, (gate, up), d_hidden)
        g_low_g, g_low_u = d_gate @ bg, d_up @ bu
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (d_gate @ wg).addmm_(d_up, wu)
            grad_x.addmm_(g_low_g, ag, alpha=sg).addmm_(g_low_u, au, alpha=su)
            grad_x = grad_x.view(*grad.shape[:-1], flat.shape[-1])
        grad_ag, grad_bg = (g_low_g.t() @ flat).mul_(sg), (d_gate.t() @ low_g).mul_(sg)
        grad_au, grad_bu = (g_low_u.t() @ flat).mul_(su), (d_up.t() @ low_u).mul_(su)
        return (
            grad_x,
            None,
            None,
            None,
            None,
            grad_ag,
            grad_bg,
            None,
            grad_au,
            grad_bu,
            None,
            grad_ad,
            grad_bd,
        )


# MLPs whose forward is exactly down_proj(act_fn(gate_proj(x)) * up_proj(x)) (read in transformers' source); any
# other MLP keeps its own forward, with each projection fused on its own.
GATED_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "Gemma2MLP", "Gemma3MLP"})


def _plain_lora(layer: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """(weight, bias, lora_A, lora_B) of a PEFT LoRA Linear in the plain case the fused path covers, else None:
    one active LoRA adapter, no dropout, not merged, not a variant (DoRA), a frozen base."""
    names = layer.active_adapters
    if layer.disable_adapters or layer.merged or len(names) != 1:
        return None
    name, base = names[0], layer.base_layer
    autocast = torch.is_autocast_enabled(x.device.type)
    if (
        name in layer.lora_A
        and name not in layer.lora_variant  # DoRA and other variants
        and isinstance(base, nn.Linear)
        and not layer.fan_in_fan_out
        and layer.lora_B[name].bias is None
        and isinstance(layer.lora_dropout[name], nn.Identity)
        and not base.weight.requires_grad
        and (base.bias is None or not base.bias.requires_grad)
        and (autocast or x.dtype == base.weight.dtype == layer.lora_A[name].weight.dtype)
    ):
        return base.weight, base.bias, layer.lora_A[name].weight, layer.lora_B[name].weight
    return None


def _dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype products run in: autocast's where it is on (as PEFT's layers would), else the input's."""
    on = x.device.type
    return torch.get_autocast_dtype(on) if torch.is_autocast_enabled(on) else x.dtype


def _forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """Replaces a PEFT LoRA Linear's `forward`: the fused path where it applies, PEFT's otherwise."""
    plain = None if kwargs.get("adapter_names") is not None else _plain_lora(self, x)
    if plain is None:
        return type(self).forward(self, x, *args, **kwargs)
    return _LoraLinear.apply(x, *plain, self.scaling[self.active_adapters[0]], _dtype(x))


def _mlp_forward(self: Any, x: torch.Tensor) -> Any:
    """Replaces a gated MLP's `forward`: one fused function where all three projections are plain LoRA layers."""
    layers = (self.gate_proj, self.up_proj, self.down_proj)
    parts = [_plain_lora(layer, x) for layer in layers]
    if any(p is None or p[1] is not None for p in parts):  # biases: none of the GATED_MLPS has them
        return type(self).forward(self, x)
    scales = tuple(layer.scaling[layer.active_adapters[0]] for layer in layers)
    weights = [w for p in parts if p is not None for w in (p[0], p[2], p[3])]
    return _LoraMLP.apply(x, self.act_fn, scales, _dtype(x), *weights)


@contextmanager
def fused_lora(model: nn.Module) -> Iterator[int]:
    """Within the block, the LoRA Linear layers of `model` use the fused path, and gated MLPs whose three
    projections are LoRA layers run as one function; yields how many Linear layers were switched."""
    from peft.tuners.lora.layer import Linear

    layers = [m for m in model.modules() if isinstance(m, Linear)]
    mlps = [
        m
        for m in model.modules()
        if type(m).__name__ in GATED_MLPS
        and all(isinstance(getattr(m, n, None), Linear) for n in ("gate_proj", "up_proj", "down_proj"))
    ]
    for layer in layers:
        layer.forward = types.MethodType(_forward, layer)  # type: ignore[method-assign]  # shadows the class method
    for mlp in mlps:
        mlp.forward = types.MethodType(_mlp_forward, mlp)  # type: ignore[method-assign]
    try:
        yield len(layers)
    finally:
        for module in layers + mlps:
            del module.forward
