"""What a training method adds to the one training loop: the `Objective` protocol and the methods registered.

The loop (`loop.py`) owns everything methods share: the model and its adapter, placement, accumulation, the
schedule, checkpoints, resume, early stopping and the saved weights. An objective owns the rest: how a prepared
row becomes an example, examples a batch, and a batch a summed loss. A new method (ORPO, KTO, online DPO, GRPO, a
reward model) is a class that satisfies `Objective` and one entry in `METHODS`, keyed by its `train.method` name,
plus that name in `config.TrainConfig.method`.

`METHODS` also says which rows a method learns from, so that `pipeline.py` can refuse data that does not fit the
method before a run is created, rather than at its first training step.

The methods: `sft` (`supervised.py`), `dpo` (`preference.py`), `orpo` (`orpo.py`), `kto` (`kto.py`), `reward` (a
reward model, `reward_model.py`), and the on-policy `online_dpo` and `grpo` (`onpolicy.py`), which sample from
the model being trained inside their `loss` and score the samples with a `rewards.Reward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from specialize.errors import DataError

if TYPE_CHECKING:
    import torch

    from specialize.config import TrainConfig
    from specialize.data import Example
    from specialize.train.rewards import Reward

E = TypeVar("E")
Batch = dict[str, "torch.Tensor"]


@dataclass
class StepRecord:
    """What a step adds to the run's records besides the loss: figures for `metrics.jsonl` (an on-policy
    method's mean reward) and rows for `samples.jsonl` (its samples, rewards and advantages)."""

    figures: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


class Objective(Protocol[E]):
    """One training method over examples of type `E`.

    The loss is a sum, and `count` what it is normalised by (target tokens, pairs, ...): the loop divides the
    summed losses of an accumulated step by their summed counts, so batch 4 x accumulation 1 and batch 1 x
    accumulation 4 give the same gradient whatever the method.
    """

    def encode(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[E]:
        """Prepared rows (`data/train.jsonl`) as examples; runs once, under the training autocast."""
        ...

    def length(self, example: E) -> int:
        """Tokens of an example, for length-grouped batches and the memory check."""
        ...

    def collate(self, examples: list[E]) -> Batch:
        """A batch; it must hold `attention_mask` (trained tokens are counted from it)."""
        ...

    def count(self, batch: Batch) -> int:
        """What the summed loss of `batch` is normalised by."""
        ...

    def loss(self, model: Any, batch: Batch) -> torch.Tensor:
        """The summed loss of a batch, to be backpropagated.

        A method that generates here (online DPO, GRPO) puts the sequences it trained on into `batch`
        (`input_ids`, `attention_mask`, `shared_prefix`), so that the loop counts the tokens trained, not the
        prompts'.
        """
        ...

    def drain(self) -> StepRecord:
        """What the steps since the last call recorded (called after every optimizer step)."""
        ...

    def validation(self, model: Any, examples: list[E]) -> float:
        """The figure early stopping and the result report: lower is better."""
        ...


@dataclass(frozen=True)
class Method:
    """A `train.method`: the rows it learns from and how its objective is built."""

    rows: frozenset[str]  # the `data.Example.kind`s it learns from
    needs: str  # those rows, as a user reads it in an error
    # (the train section, the pad token id, the reward of an on-policy method, the model trained) -> objective
    build: Callable[[TrainConfig, int, Reward | None, Any], Objective[Any]]
    scalar_head: bool = False  # the model ends in a scalar head (a reward model), not the vocabulary
    fix: str = "use train.method sft for such data"  # what to do with rows it cannot learn from


def _supervised(config: TrainConfig, pad_id: int, reward: Reward | None, model: Any) -> Objective[Any]:
    from specialize.train.supervised import SupervisedObjective

    return SupervisedObjective(pad_id, config.batch_size)


def _preference(config: TrainConfig, pad_id: int, reward: Reward | None, model: Any) -> Objective[Any]:
    from specialize.train.preference import PreferenceObjective

    return PreferenceObjective(config.dpo_beta, pad_id, config.batch_size, model)


def _orpo(config: TrainConfig, pad_id: int, reward: Reward | None, model: Any) -> Objective[Any]:
    from specialize.train.orpo import OrpoObjective

    return OrpoObjective(config.orpo_lambda, pad_id, config.batch_size)


def _kto(config: TrainConfig, pad_id: int, reward: Reward | None, model: Any) -> Objective[Any]:
    from specialize.train.kto import KtoObjective

    return KtoObjective(config.kto, pad_id, config.batch_size, model)


def _reward_model(config: TrainConfig, pad_id: int, reward: Reward | None, model: Any) -> Objective[Any]:
    from specialize.train.reward_model import RewardModelObjective

    return RewardModelObjective(pad_id, config.batch_size)


def _on_policy(config: TrainConfig, pad_id: int, reward: Reward | None, model: Any) -> Objective[Any]:
    from specialize.errors import ConfigError
    from specialize.train.onpolicy import GrpoObjective, OnlineDpoObjective

    if reward is None:
        raise ConfigError(
            f"train.method {config.method} learns from rewards of the model's own answers; add a reward: section"
        )
    if config.method == "grpo":
        return GrpoObjective(config.onpolicy, reward, pad_id, config.batch_size)
    return OnlineDpoObjective(config.onpolicy, config.dpo_beta, reward, pad_id, config.batch_size)


PAIRS = "preference pairs (prompt, chosen, rejected)"
PROMPTS = "rows with a prompt (conversations, preference pairs or rated answers)"
METHODS: dict[str, Method] = {
    "sft": Method(
        frozenset({"chat", "preference", "text"}),
        "conversations, preference pairs or text",
        _supervised,
        fix="use train.method kto for answers rated good or bad",
    ),
    "dpo": Method(frozenset({"preference"}), PAIRS, _preference),
    "orpo": Method(frozenset({"preference"}), PAIRS, _orpo),
    "kto": Method(
        frozenset({"feedback", "preference"}),
        "answers rated good or bad (prompt, completion, label true/false) or preference pairs",
        _kto,
    ),
    "reward": Method(frozenset({"preference"}), PAIRS, _reward_model, scalar_head=True),
    "online_dpo": Method(frozenset({"chat", "preference", "feedback"}), PROMPTS, _on_policy),
    "grpo": Method(frozenset({"chat", "preference", "feedback"}), PROMPTS, _on_policy),
}
ROW_KINDS = {
    "chat": "a conversation with no rejected answer",
    "preference": "a preference pair",
    "feedback": "an answer rated good or bad",
    "text": "plain text",
}


def objective_for(
    config: TrainConfig, pad_id: int, reward: Reward | None = None, model: Any = None
) -> Objective[Any]:
    """The objective of `config.method`; `reward` scores the samples of an on-policy method, and `model` (the
    one trained) gives DPO and KTO their reference, the base under its adapter."""
    return METHODS[config.method].build(config, pad_id, reward, model)


def check_rows(method: str, examples: Sequence[Example]) -> None:
    """Raise a DataError naming the first row `method` cannot learn from, and the fix.

    Raises:
        DataError: e.g. a chat row for `dpo`, which needs preference pairs.
    """
    wanted = METHODS[method]
    for example in examples:
        if example.kind not in wanted.rows:
            raise DataError(
                f"{example.where}: train.method {method} needs {wanted.needs}; this row is "
                f"{ROW_KINDS[example.kind]}. {wanted.fix[0].upper()}{wanted.fix[1:]}"
            )


def mean_loss(objective: Any, model: Any, examples: list[Any], batch_size: int) -> float:
    """The objective's summed loss over `examples` per example, in eval mode and without gradients: the
    validation figure of the methods whose loss is already a per-example sum (DPO, ORPO, KTO)."""
    import torch

    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            total += objective.loss(model, objective.collate(examples[start : start + batch_size])).item()
    model.train(was_training)
    return total / max(len(examples), 1)
