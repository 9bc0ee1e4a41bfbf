"""A reward model: the base model with a scalar head, trained on preference pairs (`train.method: reward`), and
the scorer that makes such a run the reward of another (`reward: {type: model, run: RUN}`).

The head reads the decoder's last hidden state at the last token of prompt + answer; training takes the
Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)) of each pair (InstructGPT; TRL's RewardTrainer). The
model is transformers' `*ForSequenceClassification` with one label and, with an adapter, PEFT's sequence
classification task, which trains and saves the head next to the adapter. Chosen and rejected answers share
their prompt, so a batch runs as one packed pass with that prompt once (`packing.py`), like SFT's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from specialize.config import ModelReward
from specialize.data.template import IGNORE, Encoded, encode_conversation
from specialize.errors import ConfigError, DataError
from specialize.train.batching import collate, packs
from specialize.train.objective import StepRecord
from specialize.train.rewards import Scored


@dataclass(frozen=True)
class RankedPair:
    """A prompt with its chosen and with its rejected answer, as whole sequences (no token targets)."""

    chosen: Encoded
    rejected: Encoded


def _whole(tokenizer: Any, messages: list[dict[str, str]]) -> Encoded:
    ids = encode_conversation(tokenizer, messages).input_ids
    return Encoded(ids, [IGNORE] * len(ids))


def sequence_scores(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The head's score of each row of a right-padded batch (at its last token)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, base.base_model_prefix)
    device = base.get_input_embeddings().weight.device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    n_rows = batch["input_ids"].shape[0]
    if packs(decoder.config, device):
        from specialize.train.packing import packed_forward

        hidden, _, rows = packed_forward(decoder, batch)  # each row's tokens together, in order
        last = torch.ones_like(rows, dtype=torch.bool)
        last[:-1] = rows[1:] != rows[:-1]
        values = base.score(hidden[last]).squeeze(-1)
        return torch.zeros(n_rows, dtype=values.dtype, device=device).index_add(0, rows[last], values)
    hidden = decoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    ends = batch["attention_mask"].sum(dim=1) - 1
    return base.score(hidden[torch.arange(n_rows, device=device), ends]).squeeze(-1)  # type: ignore[no-any-return]


def ranking_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
    """Summed -log sigmoid(r_chosen - r_rejected) of a batch of pairs, the pairs, and how many rank right."""
    scores = sequence_scores(model, batch)
    n = scores.shape[0] // 2
    margin = scores[:n] - scores[n:]
    return -F.logsigmoid(margin).sum(), n, int((margin > 0).sum())


@dataclass
class RewardModelObjective:
    """Bradley-Terry training of the scalar head (and adapter) on preference pairs: an `Objective[RankedPair]`."""

    pad_id: int
    batch_size: int

    def encode(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[RankedPair]:
        out = []
        for row in rows:
            if "rejected" not in row:
                raise DataError(
                    f"{row.get('source', 'training data')}: train.method reward needs preference pairs (prompt, "
                    "chosen, rejected); this row has no rejected answer"
                )
            out.append(
                RankedPair(
                    _whole(tokenizer, row["prompt"] + row["chosen"]),
                    _whole(tokenizer, row["prompt"] + row["rejected"]),
                )
            )
        return out

    def length(self, example: RankedPair) -> int:
        return len(example.chosen.input_ids) + len(example.rejected.input_ids)

    def collate(self, examples: list[RankedPair]) -> dict[str, torch.Tensor]:
        return collate([p.chosen for p in examples] + [p.rejected for p in examples], self.pad_id)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return ranking_loss(model, batch)[0]

    def drain(self) -> StepRecord:
        return StepRecord()

    def validation(self, model: Any, examples: list[RankedPair]) -> float:
        """Mean ranking loss on the validation pairs (log 2 = 0.693 for a head that cannot tell them apart)."""
        return pair_figures(model, self, examples)[0]


def pair_figures(model: Any, objective: RewardModelObjective, pairs: list[RankedPair]) -> tuple[float, float]:
    """Mean ranking loss and accuracy (the share of pairs whose chosen answer scores higher) on `pairs`."""
    was_training = model.training
    model.eval()
    total, right = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(pairs), objective.batch_size):
            loss, _, ranked = ranking_loss(
                model, objective.collate(pairs[start : start + objective.batch_size])
            )
            total, right = total + loss.item(), right + ranked
    model.train(was_training)
    return total / max(len(pairs), 1), right / max(len(pairs), 1)


def is_reward_model(weights: Path) -> bool:
    """Whether trained weights (an adapter folder or a full model folder) end in a scalar head."""
    import json

    adapter = weights / "adapter_config.json"
    if adapter.is_file():
        return json.loads(adapter.read_text(encoding="utf-8")).get("task_type") == "SEQ_CLS"
    config = weights / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def rank_pairs(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    batch_size: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> list[bool]:
    """For each preference row, whether the reward model scores its chosen answer above its rejected one;
    `on_progress` is told how many pairs each batch ranked."""
    objective = RewardModelObjective(tokenizer.pad_token_id, batch_size)
    pairs = objective.encode(model, tokenizer, rows)
    ranked: list[bool] = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            scores = sequence_scores(model, objective.collate(pairs[start : start + batch_size]))
            n = scores.shape[0] // 2
            ranked += (scores[:n] > scores[n:]).tolist()
            if on_progress is not None:
                on_progress(n)
    return ranked


def reward_model_dirs(run: str, registry_url: str | None) -> tuple[Path, Path]:
    """The base model directory and the trained weights of a finished `train.method: reward` run.

    Raises:
        RunNotFoundError: no such run.
        ConfigError: the run is not a reward model, or has not finished training.
    """
    from specialize.models import resolve_model
    from specialize.runs import open_run
    from specialize.train.loop import RESULT_FILE, TrainResult

    run_dir, config, _ = open_run(run, registry_url)
    if config.train.method != "reward":
        raise ConfigError(
            f"reward.run {run}: run {run_dir.id} was trained with train.method {config.train.method}, not a reward "
            "model; train one with train.method: reward on preference pairs and name that run"
        )
    finished = run_dir.train / RESULT_FILE
    if not finished.exists():
        raise ConfigError(
            f"reward.run {run}: run {run_dir.id} has not finished training; finish it with "
            f"`specialize train --resume {run_dir.id}`"
        )
    return resolve_model(config.base_model), TrainResult.load(finished).output_dir


def load_reward_model(base_dir: Path, weights: Path) -> tuple[Any, Any]:
    """A trained reward model and its tokenizer, in evaluation mode: an adapter over the base, or a full model."""
    from specialize.models import load_model

    if (weights / "adapter_config.json").is_file():
        from peft import PeftModel

        model, tokenizer = load_model(base_dir, scalar_head=True)
        model = PeftModel.from_pretrained(model, weights)
    else:
        model, tokenizer = load_model(weights, scalar_head=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


class RewardModelScorer:
    """The `model` reward: a reward model trained by specialize scores each answer after its prompt."""

    def __init__(self, config: ModelReward, registry_url: str | None) -> None:
        self.name = f"model {config.run}"
        self.batch_size = config.batch_size
        self.base_dir, self.weights = reward_model_dirs(config.run, registry_url)
        self._loaded: tuple[Any, Any] | None = None

    def check(self, rows: Sequence[dict[str, Any]]) -> None:
        return None  # a reward model needs only the prompt and the answer

    def score(self, items: Sequence[Scored]) -> list[Any]:
        if self._loaded is None:
            self._loaded = load_reward_model(self.base_dir, self.weights)
        model, tokenizer = self._loaded
        encoded = [
            _whole(tokenizer, [*item.prompt, {"role": "assistant", "content": item.completion}])
            for item in items
        ]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                chunk = collate(encoded[start : start + self.batch_size], tokenizer.pad_token_id)
                scores += sequence_scores(model, chunk).float().tolist()
        return scores
