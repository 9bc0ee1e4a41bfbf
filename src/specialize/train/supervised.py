"""Supervised fine-tuning (SFT): token cross-entropy on the assistant turns of each conversation.

Chat rows learn their assistant turns; plain-text rows (continued pre-training) learn every token; a preference
pair learns its chosen answer. Batches are the packed one-pass batches of `batching.py` and `packing.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specialize.data import encode_conversation, encode_text
from specialize.data.template import IGNORE, Encoded
from specialize.train.objective import Batch, StepRecord

if TYPE_CHECKING:
    import torch


class SupervisedObjective:
    """SFT as an `Objective` over encoded conversations."""

    def __init__(self, pad_id: int, batch_size: int) -> None:
        self.pad_id, self.batch_size = pad_id, batch_size

    def encode(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[Encoded]:
        return [
            encode_text(tokenizer, r["text"])
            if "messages" not in r
            else encode_conversation(tokenizer, r["messages"])
            for r in rows
        ]

    def length(self, example: Encoded) -> int:
        return len(example.input_ids)

    def collate(self, examples: list[Encoded]) -> Batch:
        from specialize.train.batching import collate

        return collate(examples, self.pad_id)

    def count(self, batch: Batch) -> int:
        return int((batch["targets"] != IGNORE).sum())

    def loss(self, model: Any, batch: Batch) -> torch.Tensor:
        from specialize.train.batching import summed_loss

        return summed_loss(model, batch)[0]

    def validation(self, model: Any, examples: list[Encoded]) -> float:
        return validation_loss(model, examples, self.pad_id, self.batch_size)

    def drain(self) -> StepRecord:
        return StepRecord()


def validation_loss(model: Any, examples: list[Encoded], pad_id: int, batch_size: int) -> float:
    """Mean token cross-entropy on the target tokens of `examples`."""
    import torch

    from specialize.train.batching import collate, summed_loss

    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            loss_sum, n = summed_loss(
                model, collate([examples[i] for i in order[start : start + batch_size]], pad_id)
            )
            total, count = total + loss_sum.item(), count + n
    model.train(was_training)
    return total / max(count, 1)
