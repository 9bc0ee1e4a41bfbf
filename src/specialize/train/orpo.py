"""ORPO (Hong et al., 2024): learn each pair's chosen answer and push its rejected one down, with no reference.

The loss of a pair is NLL(chosen) - lambda * log sigmoid(log odds(chosen) - log odds(rejected)): NLL is the mean
negative log-likelihood of the chosen answer's tokens, P(y|x) the geometric mean of an answer's token
probabilities (the exp of its mean token log-likelihood) and odds = P / (1 - P) (the paper's eq. 6-7; `lambda` is
`train.orpo_lambda`). With no reference model there is no second pass and no base to keep, so ORPO also works with
full fine-tuning. TRL's ORPOTrainer averages the NLL over all chosen tokens of a batch; here it is per pair, so
every pair weighs the same whatever its length and the loss is a sum over pairs, as the loop normalises it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from specialize.train.batching import collate, target_losses
from specialize.train.objective import StepRecord, mean_loss
from specialize.train.preference import Pair, encode_pair


def mean_logps(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean log-likelihood of each row's target tokens."""
    losses, rows = target_losses(model, batch)
    n = batch["targets"].shape[0]
    total = torch.zeros(n, dtype=losses.dtype, device=losses.device).index_add(0, rows, -losses)
    count = torch.zeros(n, dtype=losses.dtype, device=losses.device).index_add(
        0, rows, torch.ones_like(losses)
    )
    return total / count


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler, 2012); x is kept below 0 by a hair, since a
    perfectly learnt answer (x = 0) would have infinite odds."""
    x = x.clamp(max=-1e-6)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(model: Any, batch: dict[str, torch.Tensor], lam: float) -> tuple[torch.Tensor, int, int]:
    """Summed ORPO loss of a batch of pairs (chosen rows, then rejected), the pairs, and how many favour chosen."""
    avg = mean_logps(model, batch)
    n = avg.shape[0] // 2
    chosen, rejected = avg[:n], avg[n:]
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    return (-chosen - lam * F.logsigmoid(log_odds)).sum(), n, int((log_odds > 0).sum())


@dataclass
class OrpoObjective:
    """ORPO over preference pairs: an `Objective[Pair]`."""

    lam: float
    pad_id: int
    batch_size: int

    def encode(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[Pair]:
        return [encode_pair(tokenizer, r, "orpo") for r in rows]

    def length(self, example: Pair) -> int:
        return example.length

    def collate(self, examples: list[Pair]) -> dict[str, torch.Tensor]:
        # The prompt both answers share runs once (it carries no target).
        return collate([p.chosen for p in examples] + [p.rejected for p in examples], self.pad_id)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return orpo_loss(model, batch, self.lam)[0]

    def drain(self) -> StepRecord:
        return StepRecord()

    def validation(self, model: Any, examples: list[Pair]) -> float:
        """Mean ORPO loss on the validation pairs."""
        return mean_loss(self, model, examples, self.batch_size)
