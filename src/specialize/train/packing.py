"""A whole batch in one decoder pass: the shared prefix once, then every row's own tokens, with no padding.

On a CPU every forward and backward pass streams all of the model's weights (540 MB for SmolLM2-135M, about
0.08 s each way), and matrix products over a few dozen tokens run well below the machine's peak. Running a
batch as one sequence of [1, prefix + each row's own tokens] makes one pass per batch, of several hundred
tokens, instead of one for the prefix and one per group of rows, and computes no padding.

The decoder runs unchanged; only its attention is swapped, through transformers' `AttentionInterface`, for
`packed_attention`: the prefix attends causally to itself, and each row's tokens to the whole prefix and
causally to their own row. Rows of very different lengths attend in separate groups (`attention_groups`),
so one long row does not pad the attention of all the others. Each row keeps the positions (RoPE) it has in
the plain batch, so the losses and gradients are those of the plain padded forward (tested against
transformers' own, per architecture).
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


# A separate attention product per group of rows costs about as much as this many more attention scores (0.65 ms
# forward and backward per layer against 0.1 us a score, measured on 2 CPU cores with SmolLM2-135M's heads).
GROUP_COST = 6500


@dataclass
class RowGroup:
    """Rows of similar length, consecutive in the packed sequence, whose attention runs as one padded product.

    Attributes:
        valid: [rows, longest] which entries are real tokens (each row's come first).
        gather: [rows * longest] each entry's position in the packed sequence (0 for padding).
        real: the entries of `gather` that are real tokens, in packed order.
    """

    valid: torch.Tensor
    gather: torch.Tensor
    real: torch.Tensor


@dataclass
class RowLayout:
    """The prefix's length and the row groups of a packed batch, with the attention masks that follow."""

    prefix: int
    groups: list[RowGroup]
    _masks: dict[tuple[int, int | None, torch.dtype], torch.Tensor | None] = field(default_factory=dict)

    def mask(self, group: int, window: int | None, dtype: torch.dtype) -> torch.Tensor | None:
        """The attention mask of a row group ([rows, 1, longest, prefix + longest]), or of the prefix (group -1).

        Built once per forward pass, group and sliding window, and shared by every layer. `window` follows
        transformers: a query sees keys fewer than `window` positions back. None for the prefix means causal.
        Additive (0 or -inf, in the queries' dtype): a boolean mask is turned into one by every product on a
        CPU and kept by each layer for its backward pass, 4 bytes per query-key pair a layer.
        """
        if (group, window, dtype) not in self._masks:
            allowed = self._build(group, window)
            self._masks[group, window, dtype] = (
                None
                if allowed is None
                else torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
                    ~allowed, float("-inf")
                )
            )
        return self._masks[group, window, dtype]

    def _build(self, group: int, window: int | None) -> torch.Tensor | None:
        p = self.prefix
        device = self.groups[0].valid.device
        i = torch.arange(p, device=device)
        if group < 0:
            return None if window is None else (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
        valid = self.groups[group].valid
        t = torch.arange(valid.shape[1], device=device)
        own = t[None, :] <= t[:, None]  # [query, key] within a row
        to_prefix = torch.ones(len(t), p, dtype=torch.bool, device=device)
        if window is not None:
            own &= t[:, None] - t[None, :] < window
            to_prefix = (p + t[:, None]) - i[None, :] < window
        # A real query's own keys (u <= t) are all real tokens. Padding queries see every key: their output is
        # dropped, and a fully masked row would be NaN.
        return (torch.cat([to_prefix, own], dim=1)[None] | ~valid[:, :, None])[:, None]


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

    The prefix runs as one causal product; each row group is gathered into [rows, heads, longest, head_dim]
    with the prefix's keys in front of its own, so each row computes only its own scores (one product over the
    packed sequence with a block mask would compute every row against every other, about 4x the work).
    """
    if packed_rows is None:
        raise ValueError(f"the {ATTENTION} attention needs the batch's RowLayout as `packed_rows`")
    p = packed_rows.prefix
    heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[3]
    # [tokens, heads, head_dim]: the projections' own memory order, so gathering rows copies contiguous blocks
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
    outs = []
    if p:
        # Copies of the prefix's few rows: views would keep the whole packed query, key and value alive for the
        # backward pass (saved by this product), though the row groups below save gathered copies of their own.
        prefix = F.scaled_dot_product_attention(
            query[:, :, :p].contiguous(),
            key[:, :, :p].contiguous(),
            value[:, :, :p].contiguous(),
            attn_mask=packed_rows.mask(-1, sliding_window, query.dtype),
            dropout_p=dropout,
            scale=scaling,
            is_causal=sliding_window is None,
            enable_gqa=heads != kv_heads,
        )
        outs.append(prefix[0].transpose(0, 1))
    for i, group in enumerate(packed_rows.groups):
        rows, longest = group.valid.shape
        # index_select rather than advanced indexing: its backward is an index_add, not a slower index_put
        keys = k.index_select(0, group.gather).view(rows, longest, kv_heads, dim).transpose(1, 2)
        values = v.index_select(0, group.gather).view(rows, longest, kv_heads, dim).transpose(1, 2)
        if p:
            keys = torch.cat([k[:p].transpose(0, 1).expand(rows, -1, -1, -1), keys], dim=2)
            values = torch.cat([v[:p].transpose(0, 1).expand(rows, -1, -1, -1), values], dim=2)
        out = F.scaled_dot_product_attention(
            q.index_select(0, group.gather).view(rows, longest, heads, dim).transpose(1, 2),
            keys,
            values,
            attn_mask=packed_rows.mask(i, sliding_window, query.dtype),
            dropout_p=dropout,
            scale=scaling,
            enable_gqa=heads != kv_heads,
        )
        outs.append(out.transpose(1, 2).reshape(rows * longest, heads, dim).index_select(0, group.real))
    return torch.cat(outs)[None], None


def attention_groups(lengths: list[int], prefix: int) -> list[list[int]]:
    """Row indices, shortest first, in groups that minimise attention scores plus `GROUP_COST` per group.

    A group's attention is padded to its longest row, so one long row among short ones multiplies the work of
    all of them; a separate group costs a fixed overhead instead. Dynamic programming over the sorted rows (a
    batch has a handful).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    # best[j]: the cheapest cost of the first j sorted rows, and where its last group starts
    best = [(0, 0)] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        w = lengths[order[j - 1]]
        best[j] = min((best[i][0] + (j - i) * w * (prefix + w) + GROUP_COST, i) for i in range(j))
    groups, j = [], len(order)
    while j:
        i = best[j][1]
        groups.append(order[i:j])
        j = i
    return groups[::-1]


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
        Hidden states [row tokens, hidden], their targets and their batch rows, a row's tokens together (rows
        ordered by `attention_groups`); the prefix's tokens are left out (they have no target).
    """
    n = int(batch.get("shared_prefix", 0))
    device = batch["input_ids"].device
    own_all = batch["attention_mask"][:, n:].bool()  # right-padded, so each row's tokens come first
    groups = attention_groups(own_all.sum(dim=1).tolist(), n)
    order = torch.tensor([i for g in groups for i in g], device=device)  # rows in packed order
    own = own_all[order]
    lengths = own.sum(dim=1)
    within = torch.arange(own.shape[1], device=device)
    at = n + (lengths.cumsum(0) - lengths)[:, None] + within  # each entry's position in the packed sequence
    layout, first = RowLayout(n, []), 0
    for g in groups:
        valid = own[first : first + len(g), : int(lengths[first + len(g) - 1])]
        gather = torch.where(valid, at[first : first + len(g), : valid.shape[1]], 0).flatten()
        layout.groups.append(RowGroup(valid, gather, valid.flatten().nonzero()[:, 0]))
        first += len(g)
    ids = batch["input_ids"]
    packed = torch.cat([ids[0, :n], ids[order, n:][own]])[None]
    positions = torch.cat([torch.arange(n, device=device), (n + within).expand_as(own)[own]])[None]
    with packed_attention_in(decoder.config):
        hidden = decoder(input_ids=packed, position_ids=positions, use_cache=False, packed_rows=layout)
    rows = order[:, None].expand_as(own)[own]
    return hidden.last_hidden_state[0, n:], batch["targets"][order, n:][own], rows
