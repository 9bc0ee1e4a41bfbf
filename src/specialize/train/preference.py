"""Direct preference optimisation (DPO): learn to prefer each pair's chosen answer over its rejected one.

The loss (Rafailov et al., 2023) is -log sigmoid(beta * ((pc - rc) - (pr - rr))): p are the policy's summed
log-likelihoods of the chosen (c) and rejected (r) answers after the prompt, r* the reference model's. The
reference is the base model, which an adapter run already holds: switching the adapter off gives it back, so no
second copy is kept in memory. Its log-likelihoods never change, so each pair's are computed once, the first time
the pair is batched, and kept on the pair: a run of a few hundred steps over a few thousand pairs pays only for
the pairs it draws (a whole-set pass before the first step took 12 minutes for 1,932 HH pairs on 2 cores, of
which a 50-step run used 200), and a search's trials, which share the encoded pairs, pay once between them.

`PreferenceObjective` is an `Objective` (`objective.py`), like supervised fine-tuning's: examples to batch, a summed
loss with the count it is normalised by, and a validation figure, so the one training loop (accumulation,
schedule, checkpoints, resume, early stopping) serves both methods.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from specialize.data.template import IGNORE, Encoded, encode_conversation, render_prompt
from specialize.errors import DataError
from specialize.train.batching import collate, target_losses
from specialize.train.objective import StepRecord, mean_loss


@dataclass
class Pair:
    """A prompt's chosen and rejected answers, targets on the answer only, and the reference's log-likelihoods
    of both once they have been computed (`with_reference`)."""

    chosen: Encoded
    rejected: Encoded
    reference: tuple[float, float] | None = None

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
    """The chosen sequences, then the rejected ones, as one right-padded batch, with their reference scores
    where the pairs have them."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    batch["shared_prefix"] = torch.tensor(0)  # chosen and rejected rows are scored whole
    if all(p.reference is not None for p in pairs):
        scores = [p.reference for p in pairs if p.reference is not None]
        batch["reference"] = torch.tensor([c for c, _ in scores] + [r for _, r in scores])
    return batch


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-likelihood of each row's target tokens."""
    losses, rows = target_losses(model, batch)
    zeros = torch.zeros(batch["targets"].shape[0], dtype=losses.dtype, device=losses.device)
    return zeros.index_add(0, rows, -losses)


@contextmanager
def base_model(model: Any) -> Iterator[None]:
    """The reference model for a pass: the base under the adapter (adapter off, eval mode, no gradient)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter():
            yield
    finally:
        model.train(was_training)


def with_reference(model: Any, pairs: list[Pair], pad_id: int, batch_size: int) -> list[Pair]:
    """`pairs`, each with the reference (base model, adapter off) log-likelihoods filled in where it had none."""
    missing = [p for p in pairs if p.reference is None]
    if missing:
        with base_model(model):
            for start in range(0, len(missing), batch_size):
                chunk = missing[start : start + batch_size]
                logps = sequence_logps(model, collate_pairs(chunk, pad_id)).tolist()
                n = len(chunk)
                for i, pair in enumerate(chunk):
                    pair.reference = (logps[i], logps[n + i])
    return pairs


def dpo_loss(model: Any, batch: dict[str, torch.Tensor], beta: float) -> tuple[torch.Tensor, int, int]:
    """Summed DPO loss of a batch of pairs, the number of pairs, and how many the policy already ranks right."""
    logps = sequence_logps(model, batch)
    n = logps.shape[0] // 2
    gained = logps - batch["reference"].to(logps.device)
    margin = beta * (gained[:n] - gained[n:])
    return -F.logsigmoid(margin).sum(), n, int((margin > 0).sum())


@dataclass
class PreferenceObjective:
    """DPO over preference pairs, with the base model under the adapter of `model` as the reference: an
    `Objective[Pair]`."""

    beta: float
    pad_id: int
    batch_size: int
    model: Any

    def encode(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[Pair]:
        if not hasattr(model, "disable_adapter"):
            raise DataError(
                "train.method dpo takes its reference model from the base under the adapter; set train.adapter "
                "to lora or dora"
            )
        return [encode_pair(tokenizer, r) for r in rows]

    def length(self, example: Pair) -> int:
        return example.length

    def collate(self, examples: list[Pair]) -> dict[str, torch.Tensor]:
        return collate_pairs(with_reference(self.model, examples, self.pad_id, self.batch_size), self.pad_id)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return dpo_loss(model, batch, self.beta)[0]

    def drain(self) -> StepRecord:
        return StepRecord()

    def validation(self, model: Any, examples: list[Pair]) -> float:
        """Mean DPO loss on the validation pairs (log 2 = 0.693 for a policy equal to its reference)."""
        return mean_loss(self, model, examples, self.batch_size)
