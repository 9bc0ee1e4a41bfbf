"""KTO (Ethayarajh et al., 2024): learn from answers rated good or bad one at a time, with no pairs.

This is the shape of thumbs-up and thumbs-down feedback (`feedback` rows: prompt, completion, label true/false).
Each answer y to a prompt x has the implicit reward r = log p(y|x) - log p_ref(y|x), the reference being the
base model (the adapter switched off; each answer's computed once, the first time it is batched, as DPO's). A good
answer's loss is desirable_weight * (1 - sigmoid(beta (r - z))), a bad one's undesirable_weight *
(1 - sigmoid(beta (z - r))). z, the reference point, estimates the KL divergence of the policy from the base: as
in the paper and TRL, the mean of log p - log p_ref over mismatched pairs of the batch (each prompt with the next
example's answer), without gradient and clipped at 0. A preference pair is read as one good and one bad answer
(the paper's way to use pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from specialize.config import KtoConfig
from specialize.data.template import IGNORE, Encoded
from specialize.errors import DataError
from specialize.train.batching import collate
from specialize.train.objective import StepRecord, mean_loss
from specialize.train.preference import answer_only, base_model, sequence_logps

Batch = dict[str, torch.Tensor]
SEQUENCE_KEYS = ("input_ids", "attention_mask", "targets", "shared_prefix")


@dataclass
class Rated:
    """An answer after its prompt, targets on the answer; where the answer starts; its rating; the reference's
    log-likelihood of it, once computed (the first time the answer is batched, as DPO's pairs are)."""

    sequence: Encoded
    start: int
    desirable: bool
    reference: float | None = None


def rate(
    tokenizer: Any, prompt: list[dict[str, str]], answer: list[dict[str, str]], desirable: bool
) -> Rated:
    sequence = answer_only(tokenizer, prompt, answer)
    start = next(i for i, label in enumerate(sequence.labels) if label != IGNORE)
    return Rated(sequence, start, desirable)


def mismatched(examples: list[Rated]) -> list[Encoded]:
    """Each example's prompt followed by the next example's answer: what the KL estimate is taken over."""
    out = []
    for i, own in enumerate(examples):
        other = examples[(i + 1) % len(examples)]
        ids = own.sequence.input_ids[: own.start] + other.sequence.input_ids[other.start :]
        labels = [IGNORE] * own.start + other.sequence.labels[other.start :]
        out.append(Encoded(ids, labels))
    return out


def kto_loss(model: Any, batch: Batch, config: KtoConfig) -> torch.Tensor:
    """Summed KTO loss of a batch (see the module docstring)."""
    logps = sequence_logps(model, {k: batch[k] for k in SEQUENCE_KEYS})
    kl_batch = {k: batch[f"kl_{k}"] for k in SEQUENCE_KEYS}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        policy = sequence_logps(model, kl_batch)
        with model.disable_adapter():
            reference = sequence_logps(model, kl_batch)
    model.train(was_training)
    z = (policy - reference).mean().clamp(min=0)
    reward = logps - batch["reference"].to(logps.device)
    desirable = batch["desirable"].to(logps.device)
    good = config.desirable_weight * (1 - torch.sigmoid(config.beta * (reward - z)))
    bad = config.undesirable_weight * (1 - torch.sigmoid(config.beta * (z - reward)))
    return torch.where(desirable, good, bad).sum()


@dataclass
class KtoObjective:
    """KTO over rated answers (or pairs, read as one good and one bad answer), with the base model under the
    adapter of `model` as the reference: an `Objective[Rated]`."""

    config: KtoConfig
    pad_id: int
    batch_size: int
    model: Any

    def encode(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[Rated]:
        if not hasattr(model, "disable_adapter"):
            raise DataError(
                "train.method kto takes its reference model from the base under the adapter; set train.adapter "
                "to lora or dora"
            )
        rated = []
        for row in rows:
            if "completion" in row:
                rated.append(rate(tokenizer, row["prompt"], row["completion"], bool(row["desirable"])))
            elif "rejected" in row:
                rated.append(rate(tokenizer, row["prompt"], row["chosen"], True))
                rated.append(rate(tokenizer, row["prompt"], row["rejected"], False))
            else:
                raise DataError(
                    f"{row.get('source', 'training data')}: train.method kto needs answers rated good or bad "
                    "(prompt, completion, label true/false) or preference pairs; this row is neither"
                )
        return rated

    def length(self, example: Rated) -> int:
        return len(example.sequence.input_ids)

    def collate(self, examples: list[Rated]) -> Batch:
        batch = collate([e.sequence for e in examples], self.pad_id)
        missing = [e for e in examples if e.reference is None]
        if missing:
            with base_model(self.model):
                logps = sequence_logps(self.model, collate([e.sequence for e in missing], self.pad_id))
            for example, logp in zip(missing, logps.tolist(), strict=True):
                example.reference = logp
        batch.update({f"kl_{k}": v for k, v in collate(mismatched(examples), self.pad_id).items()})
        batch["reference"] = torch.tensor([e.reference for e in examples])
        batch["desirable"] = torch.tensor([e.desirable for e in examples])
        return batch

    def count(self, batch: Batch) -> int:
        return int(batch["desirable"].numel())

    def loss(self, model: Any, batch: Batch) -> torch.Tensor:
        return kto_loss(model, batch, self.config)

    def drain(self) -> StepRecord:
        return StepRecord()

    def validation(self, model: Any, examples: list[Rated]) -> float:
        """Mean KTO loss on the validation answers (0.5 per answer for a policy equal to its reference)."""
        return mean_loss(self, model, examples, self.batch_size)
