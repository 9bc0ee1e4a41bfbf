"""Batches with little padding, and the loss computed only where it is taken.

Written by hand rather than taken from a trainer library because of two CPU costs that dominate small-model
fine-tuning: padding (tokens that are computed and thrown away) and the vocabulary projection (for a 135 M model
with a 49 k vocabulary the `lm_head` is a fifth of all FLOPs, yet SFT on short answers needs it at a few positions
per sequence). Length-grouped batches and a projection of only the target positions remove most of both.

A third cost is repetition: task datasets repeat the same system prompt and instructions in every example (85 of
the 140 tokens of a legal_unfair_tos example). The prefix that all rows of a batch share runs once, and the whole
batch runs as one packed pass with no padding at all (`packing.py`); loss and gradients are those of the plain
padded batch (tested).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from specialize.data.template import IGNORE, Encoded


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


# Computed tokens per forward and backward pass on a CPU. A batch of long rows (GSM8K's answers run to a few
# hundred tokens) runs as several passes of rows under this budget, each followed by its backward pass, so
# the activations kept for the backward pass are those of one pass, about 30 KB a token a layer in float32
# (1.4 GB for SmolLM2-135M at this budget, against 2.4 GB for a batch of 8 GSM8K rows in one pass). A pass
# of this many tokens keeps every matrix product at the machine's matmul speed; each extra pass streams the
# weights once more, a few per cent of a step. Short rows, and a batch's shared prefix, stay in one pass.
PASS_TOKENS = 1536


def passes(examples: list[Encoded], budget: int | None) -> list[list[Encoded]]:
    """A batch's examples as one pass, or, where it computes more than `budget` tokens (a shared prefix once),
    as consecutive groups of about equal tokens (a row longer than the budget runs alone)."""
    if budget is None:  # any objective's examples, not only encoded conversations
        return [examples]
    lengths = [len(e.input_ids) for e in examples]
    total = sum(lengths)
    if total - shared_prefix_length(examples) * (len(examples) - 1) <= budget:
        return [examples]
    n = -(-total // budget)
    parts: list[list[Encoded]] = [[]]
    done = 0
    for example, length in zip(examples, lengths, strict=True):
        # the next part starts where this row would carry the current one past its even share
        if parts[-1] and len(parts) < n and done + length > total * len(parts) / n:
            parts.append([])
        parts[-1].append(example)
        done += length
    return parts


def pass_tokens(examples: list[Encoded], budget: int | None) -> int:
    """The most tokens one pass of this batch computes (`passes`; a shared prefix once where it packs)."""
    return max(
        sum(len(e.input_ids) for e in part) - shared_prefix_length(part) * (len(part) - 1)
        for part in passes(examples, budget)
    )


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
    return n


def summed_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of token cross-entropies over the target positions, and how many there are.

    Returning the sum (not the mean) lets the caller divide by the target count of the whole accumulated step,
    so batch 4 x accumulation 1 and batch 1 x accumulation 4 give the same gradient.
    """
    losses, _ = target_losses(model, batch)
    return losses.sum(), losses.numel()


def target_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-entropy of every target token, and the batch row each one belongs to.

    The batch runs as one packed pass (`packing.packed_forward`: the shared prefix once, each row's own tokens,
    no padding) where `packs` says so; otherwise as the plain padded batch.
    """
    from specialize.train.head_loss import head_losses
    from specialize.train.packing import packed_forward

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    device = base.get_input_embeddings().weight.device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}  # batches are collated on the CPU
    if packs(decoder.config, device):
        hidden, targets, rows = packed_forward(decoder, batch)
    else:
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        targets = batch["targets"]
        rows = torch.arange(len(targets), device=targets.device)[:, None].expand_as(targets)
    where = targets != IGNORE
    return head_losses(base.get_output_embeddings(), hidden[where], targets[where]), rows[where]


def packs(model_config: Any, device: torch.device) -> bool:
    """Whether a batch runs as one packed pass: on a CPU, for the architectures `packing` supports.

    On a CPU arithmetic is the cost, and packing removes the padding and the repeated prefix. On a GPU a small
    model's step costs kernel launches and host time, not arithmetic (SmolLM2-135M at batch 8 kept an H200
    under 1% busy), and the plain padded pass runs each layer's attention as one fused kernel where packing
    adds gathers and a product per group of rows: measured there, the earlier CPU plan of several passes per
    batch ran 0.75x TRL's tokens/s, one padded pass 0.93x.
    """
    from specialize.train.packing import supports

    return device.type == "cpu" and supports(model_config)


def computed_tokens(batch: dict[str, torch.Tensor], model_config: Any, device: torch.device) -> int:
    """Non-padding tokens a batch runs through the model: a shared prefix counted once where it runs once."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    prefix = int(batch.get("shared_prefix", 0)) if packs(model_config, device) else 0
    return sum(lengths) - prefix * (len(lengths) - 1)
