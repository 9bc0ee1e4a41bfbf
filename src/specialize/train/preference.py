"""Direct preference optimisation (DPO): learn to prefer each pair's chosen answer over its rejected one.

The loss (Rafailov et al., 2023) is -log sigmoid(beta * ((pc - rc) - (pr - rr))): p are the policy's summed
log-likelihoods of the chosen (c) and rejected (r) answers after the prompt, r* the reference model's. The
reference is the base model, which an adapter run already holds: switching the adapter off gives it back, so no
second copy is kept in memory. Its log-likelihoods never change, so they are computed once, before the first step
(a pass that takes minutes over a few thousand pairs on a CPU, so it is announced and timed in the log).

`PreferenceObjective` is an `Objective` (`objective.py`), like supervised fine-tuning's: examples to batch, a summed
loss with the count it is normalised by, and a validation figure, so the one training loop (accumulation,
schedule, checkpoints, resume, early stopping) serves both methods.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from specialize.data.template import IGNORE, Encoded, encode_conversation, render_prompt
from specialize.errors import DataError
from specialize.train.batching import collate, target_losses
from specialize.train.objective import StepRecord, mean_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """A prompt's chosen and rejected answers, targets on the answer only, with the reference's log-likelihoods."""

    chosen: Encoded
    rejected: Encoded
    reference: tuple[float, float] = (0.0, 0.0)

    @property
    def length(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


def encode_pair(tokenizer: Any, row: dict[str, Any], method: str = "dpo") -> Pair:
    """A prepared preference row (`prompt`, `chosen`, `rejected` message lists) as two target-masked sequences."""
    if "rejected" not in row:
        raise DataError(
            f"{row.get('source', 'training data')}: train.method {method} needs preference pairs (prompt, chosen, "
            "rejected); this row has no rejected answer. Use train.method sft for chat data"
        )
    return Pair(
        answer_only(tokenizer, row["prompt"], row["chosen"]),
        answer_only(tokenizer, row["prompt"], row["rejected"]),
    )


def answer_only(tokenizer: Any, prompt: list[dict[str, str]], answer: list[dict[str, str]]) -> Encoded:
    """The conversation's tokens with targets on the answer alone, not on assistant turns inside the prompt."""
    whole = encode_conversation(tokenizer, prompt + answer)
    start = len(render_prompt(tokenizer, prompt))  # characters before the answer
    text = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    labels = [label if a >= start else IGNORE for label, (a, _) in zip(whole.labels, offsets, strict=True)]
    return Encoded(whole.input_ids, labels)


def collate_pairs(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """The chosen sequences, then the rejected ones, as one right-padded batch, with their reference scores."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    batch["shared_prefix"] = torch.tensor(0)  # chosen and rejected rows are scored whole
    batch["reference"] = torch.tensor([p.reference[0] for p in pairs] + [p.reference[1] for p in pairs])
    return batch


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-likelihood of each row's target tokens."""
    losses, rows = target_losses(model, batch)
    zeros = torch.zeros(batch["targets"].shape[0], dtype=losses.dtype, device=losses.device)
    return zeros.index_add(0, rows, -losses)


@contextmanager
def base_model(model: Any, announce: str | None = None) -> Iterator[None]:
    """The reference model for a pass: the base under the adapter (adapter off, eval mode, no gradient).
    `announce` names a long pass (a whole training set) in the log, with its duration."""
    start = time.perf_counter()
    if announce:
        log.info("reference pass: %s under the base model (adapter off), before the first step", announce)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter():
            yield
    finally:
        model.train(was_training)
    if announce:
        log.info("reference pass done in %.0f s", time.perf_counter() - start)


def with_reference(
    model: Any, pairs: list[Pair], pad_id: int, batch_size: int, announce: bool = False
) -> list[Pair]:
    """`pairs` with the reference (base model, adapter off) log-likelihoods filled in; `announce` logs the
    pass (for a whole training set, not a step's own samples)."""
    out = []
    with base_model(model, f"{len(pairs):,} pairs" if announce else None):
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            logps = sequence_logps(model, collate_pairs(chunk, pad_id)).tolist()
            n = len(chunk)
            out += [replace(p, reference=(logps[i], logps[n + i])) for i, p in enumerate(chunk)]
    return out


def dpo_loss(model: Any, batch: dict[str, torch.Tensor], beta: float) -> tuple[torch.Tensor, int, int]:
    """Summed DPO loss of a batch of pairs, the number of pairs, and how many the policy already ranks right."""
    logps = sequence_logps(model, batch)
    n = logps.shape[0] // 2
    gained = logps - batch["reference"].to(logps.device)
    margin = beta * (gained[:n] - gained[n:])
    return -F.logsigmoid(margin).sum(), n, int((margin > 0).sum())


@dataclass
class PreferenceObjective:
    """DPO over preference pairs, with the base model as the reference: an `Objective[Pair]`."""

    beta: float
    pad_id: int
    batch_size: int

    def encode(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[Pair]:
        if not hasattr(model, "disable_adapter"):
            raise DataError(
                "train.method dpo takes its reference model from the base under the adapter; set train.adapter "
                "to lora or dora"
            )
        pairs = [encode_pair(tokenizer, r) for r in rows]
        return with_reference(model, pairs, self.pad_id, self.batch_size, announce=True)

    def length(self, example: Pair) -> int:
        return example.length

    def collate(self, examples: list[Pair]) -> dict[str, torch.Tensor]:
        return collate_pairs(examples, self.pad_id)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return dpo_loss(model, batch, self.beta)[0]

    def drain(self) -> StepRecord:
        return StepRecord()

    def validation(self, model: Any, examples: list[Pair]) -> float:
        """Mean DPO loss on the validation pairs (log 2 = 0.693 for a policy equal to its reference)."""
        return mean_loss(self, model, examples, self.batch_size)
