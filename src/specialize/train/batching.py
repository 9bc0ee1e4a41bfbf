"""Batches with little padding, and the loss computed only where it is taken.

Written by hand rather than taken from a trainer library because of two CPU costs that dominate small-model
fine-tuning: padding (tokens that are computed and thrown away) and the vocabulary projection (for a 135 M model
with a 49 k vocabulary the `lm_head` is a fifth of all FLOPs, yet SFT on short answers needs it at a few positions
per sequence). Length-grouped batches and a projection of only the target positions remove most of both.

A third cost is repetition: task datasets repeat the same system prompt and instructions in every example (85 of
the 140 tokens of a legal_unfair_tos example). The prefix that all rows of a batch share is run once, its
key/value cache repeated over the batch, and only the rows' own tokens run per row. Gradients flow back through
the repeated cache into the one prefix pass, so loss and gradients are those of the plain batch (tested).
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F

from specialize.data.template import IGNORE, Encoded

MIN_SHARED_PREFIX = 16  # below this, the extra pass costs more than the tokens it saves
PASS_COST = 32  # tokens' worth of work that one more forward pass over a group of rows costs (measured)


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices of one epoch in batches of similar length, in random batch order.

    Shuffles, sorts within windows of 64 batches so neighbours have similar lengths, then shuffles the batches:
    padding drops while every epoch still sees the data in a different order.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 64
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and next-token targets (already shifted by one)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        targets[row, : n - 1] = torch.tensor(e.labels[1:])
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "targets": targets,
        "shared_prefix": torch.tensor(shared_prefix_length(examples)),
    }


def shared_prefix_length(examples: list[Encoded]) -> int:
    """Tokens at the start of every example that are identical and carry no target.

    At least one input token per row stays outside the prefix; a single example gets no prefix (nothing to share).
    """
    if len(examples) < 2:
        return 0
    first = examples[0].input_ids
    n = min(len(e.input_ids) for e in examples) - 1
    for e in examples:
        n = next((i for i in range(n) if e.input_ids[i] != first[i] or e.labels[i + 1] != IGNORE), n)
    return n if n >= MIN_SHARED_PREFIX else 0


def summed_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of token cross-entropies over the target positions, and how many there are.

    Returning the sum (not the mean) lets the caller divide by the target count of the whole accumulated step,
    so batch 4 x accumulation 1 and batch 1 x accumulation 4 give the same gradient.
    """
    losses, _ = target_losses(model, batch)
    return losses.sum(), losses.numel()


def target_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-entropy of every target token, and the batch row each one belongs to.

    On the CPU the rows run in groups of similar length (`row_groups`), each padded only to its own longest
    row, and a shared prefix runs once, its key/value cache repeated into every group. See `passes`.
    """
    from transformers import DynamicCache

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    lengths = batch["attention_mask"].sum(dim=1).tolist()  # read on the CPU, where batches are collated
    device = base.get_input_embeddings().weight.device
    n, groups = passes(device, int(batch.get("shared_prefix", 0)), lengths)
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    prefix = []
    if n:
        prefix = list(decoder(input_ids=batch["input_ids"][:1, :n], use_cache=True).cache)
    losses, rows = [], []
    for group in groups:
        index = torch.tensor(group, device=device)
        width = max(lengths[i] for i in group)
        targets = batch["targets"][index, n:width]
        cache = None
        if n:
            repeated = [
                (k.expand(len(group), -1, -1, -1), v.expand(len(group), -1, -1, -1)) for k, v, *_ in prefix
            ]
            cache = DynamicCache(ddp_cache_data=repeated, config=base.config)
        hidden = decoder(
            input_ids=batch["input_ids"][index, n:width],
            attention_mask=batch["attention_mask"][index, :width],
            cache=cache,
            use_cache=bool(n),
        ).last_hidden_state
        where = targets != IGNORE
        logits = base.get_output_embeddings()(hidden[where])
        losses.append(F.cross_entropy(logits.float(), targets[where], reduction="none"))
        rows.append(index[where.nonzero()[:, 0]])
    return torch.cat(losses), torch.cat(rows)


def passes(device: torch.device, shared_prefix: int, lengths: list[int]) -> tuple[int, list[list[int]]]:
    """How a batch runs: the shared prefix to run once (0: none), and the groups of rows run after it.

    On a CPU arithmetic is the cost, so the prefix and padding are worth saving with extra passes. On a GPU a
    small model's pass costs kernel launches, not arithmetic (a 135 M model at batch 8 keeps an H100 under
    1% busy), so every extra pass costs more than the arithmetic it saves: one padded pass per batch.
    """
    if device.type != "cpu":
        return 0, [list(range(len(lengths)))]
    return shared_prefix, row_groups([length - shared_prefix for length in lengths])


def computed_tokens(batch: dict[str, torch.Tensor], device: torch.device) -> int:
    """Non-padding tokens a batch runs through the model on `device`, a prefix run once counted once."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    prefix, _ = passes(device, int(batch.get("shared_prefix", 0)), lengths)
    return sum(lengths) - prefix * (len(lengths) - 1)


def row_groups(lengths: list[int], pass_cost: int = PASS_COST) -> list[list[int]]:
    """Row indices in groups of similar length that minimise padded tokens plus `pass_cost` per group.

    A batch padded to its longest row computes every row at that width: one long row in a batch of short ones
    can double the work. Splitting the rows into sorted runs, each padded to its own longest, removes most of
    that padding; each extra forward pass costs about `pass_cost` tokens (per-layer overhead and smaller
    matrix products), so a split is made only where it saves more than that. Found by dynamic programming over
    the rows sorted by length (a batch has a handful of rows).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    # best[j]: the cheapest cost of the first j sorted rows, and where its last group starts
    best = [(0, 0)] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        best[j] = min((best[i][0] + (j - i) * lengths[order[j - 1]] + pass_cost, i) for i in range(j))
    groups, j = [], len(order)
    while j:
        i = best[j][1]
        groups.append(order[i:j])
        j = i
    return groups[::-1]
