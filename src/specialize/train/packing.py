"""A whole batch in one decoder pass: the shared prefix once, then every row's own tokens, with no padding.

On a CPU every forward and backward pass streams all of the model's weights (540 MB for SmolLM2-135M, about
0.08 s each way), and matrix products over a few dozen tokens run well below the machine's peak. Running a
batch as one sequence of [1, prefix + each row's own tokens] makes one pass per batch, of several hundred
tokens, instead of one for the prefix and one per group of rows, and computes no padding.

The decoder runs unchanged; only its attention is swapped, through transformers' `AttentionInterface`, for
`packed_attention`: the prefix attends causally to itself, and each row's tokens to the whole prefix and
causally to their own row. Each row keeps the positions (RoPE) it has in the plain batch, so the losses and
gradients are those of the plain padded forward (tested against transformers' own, per architecture).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

ATTENTION = "specialize_packed"
# Architectures whose attention goes through transformers' AttentionInterface with no score modifier the
# function below would miss (logit softcapping, bidirectional blocks): tested in tests/train/test_packing.py.
# Any other model runs the plain padded forward, because attention code that ignores the interface would let
# rows see each other without an error.
ARCHITECTURES = frozenset({"llama", "qwen2", "gemma3_text", "phi3"})


def supports(config: Any) -> bool:
    """Whether the decoder with this config can run a packed batch."""
    return (
        config.model_type in ARCHITECTURES
        and getattr(config, "attn_logit_softcapping", None) is None
        and not getattr(config, "use_bidirectional_attention", False)
    )


@dataclass
class RowLayout:
    """Where each row's tokens are in the packed sequence, and the attention masks that follow from it.

    Attributes:
        prefix: tokens shared by every row, at the start of the packed sequence.
        index: [rows, longest] position in the packed sequence of each row's own tokens (0 past a row's end).
        valid: [rows, longest] which entries of `index` are real tokens.
    """

    prefix: int
    index: torch.Tensor
    valid: torch.Tensor
    _masks: dict[int | None, tuple[torch.Tensor | None, torch.Tensor]] = field(default_factory=dict)

    def masks(self, window: int | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The prefix's mask (None: plain causal) and the rows' [rows, 1, longest, prefix + longest] mask.

        Built once per forward pass and sliding window, shared by every layer. `window` follows transformers'
        sliding window: a query sees keys fewer than `window` positions back.
        """
        if window not in self._masks:
            device, p, longest = self.index.device, self.prefix, self.index.shape[1]
            t = torch.arange(longest, device=device)
            own = t[None, :] <= t[:, None]  # [query, key] within a row
            to_prefix = torch.ones(longest, p, dtype=torch.bool, device=device)
            prefix_mask = None
            if window is not None:
                own &= t[:, None] - t[None, :] < window
                to_prefix = (p + t[:, None]) - torch.arange(p, device=device)[None, :] < window
                i = torch.arange(p, device=device)
                prefix_mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
            # A real query's own keys (u <= t) are all real tokens. Padding queries see every key: their output
            # is dropped, and a fully masked row would be NaN.
            rows = torch.cat([to_prefix, own], dim=1)[None] | ~self.valid[:, :, None]
            self._masks[window] = prefix_mask, rows[:, None]
        return self._masks[window]


def packed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    packed_rows: RowLayout | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention over a packed batch ([1, heads, tokens, head_dim] in, [1, tokens, heads, head_dim] out).

    The prefix runs as one causal product; the rows are gathered into [rows, heads, longest, head_dim] with
    the prefix's keys in front of their own, so each row computes only its own scores (a single product over
    the packed sequence with a block mask would compute every row against every other, about 4x the work).
    """
    if packed_rows is None:
        raise ValueError(f"the {ATTENTION} attention needs the batch's RowLayout as `packed_rows`")
    p, index, valid = packed_rows.prefix, packed_rows.index, packed_rows.valid
    prefix_mask, rows_mask = packed_rows.masks(sliding_window)
    gqa = query.shape[1] != key.shape[1]
    # [tokens, heads, head_dim]: the projections' own memory order, so gathering rows copies contiguous blocks
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
    keys, values = k[index].transpose(1, 2), v[index].transpose(1, 2)
    if p:
        rows = index.shape[0]
        keys = torch.cat([k[:p].transpose(0, 1).expand(rows, -1, -1, -1), keys], dim=2)
        values = torch.cat([v[:p].transpose(0, 1).expand(rows, -1, -1, -1), values], dim=2)
    out = F.scaled_dot_product_attention(
        q[index].transpose(1, 2),
        keys,
        values,
        attn_mask=rows_mask,
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=gqa,
    )
    out = out.transpose(1, 2)[valid]  # [row tokens, heads, head_dim], rows in order
    if p:
        prefix = F.scaled_dot_product_attention(
            query[:, :, :p],
            key[:, :, :p],
            value[:, :, :p],
            attn_mask=prefix_mask,
            dropout_p=dropout,
            scale=scaling,
            is_causal=prefix_mask is None,
            enable_gqa=gqa,
        )
        out = torch.cat([prefix[0].transpose(0, 1), out])
    return out[None], None


@contextmanager
def packed_attention_in(config: Any) -> Iterator[None]:
    """Within the block, the model with this config attends with `packed_attention`.

    transformers picks the attention function from `config._attn_implementation` on every call, so it is set
    for the block and restored after. An implementation without a mask function makes transformers build no
    4-D mask (its masking code returns None for it).
    """
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, packed_attention)
    previous = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous


def packed_forward(
    decoder: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoder's last hidden state at every row token of a right-padded batch, in one pass.

    Args:
        decoder: the base model's decoder (e.g. `LlamaModel`), of an architecture `supports` accepts.
        batch: from `batching.collate`; `shared_prefix` tokens at the start of every row carry no target.

    Returns:
        Hidden states [row tokens, hidden], their targets and their batch rows, rows one after another; the
        prefix's tokens are left out (they have no target).
    """
    n = int(batch.get("shared_prefix", 0))
    ids = batch["input_ids"]
    device = ids.device
    own = batch["attention_mask"][:, n:].bool()  # right-padded, so each row's tokens come first
    lengths = own.sum(dim=1)
    within = torch.arange(own.shape[1], device=device)
    starts = n + lengths.cumsum(0) - lengths
    layout = RowLayout(n, torch.where(own, starts[:, None] + within, 0), own)
    packed = torch.cat([ids[0, :n], ids[:, n:][own]])[None]
    positions = torch.cat([torch.arange(n, device=device), (n + within).expand_as(own)[own]])[None]
    with packed_attention_in(decoder.config):
        hidden = decoder(input_ids=packed, position_ids=positions, use_cache=False, packed_rows=layout)
    rows = torch.arange(len(ids), device=device)[:, None].expand_as(own)[own]
    return hidden.last_hidden_state[0, n:], batch["targets"][:, n:][own], rows
