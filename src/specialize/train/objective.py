"""What a training method adds to the one training loop: the `Objective` protocol and the methods registered.

The loop (`loop.py`) owns everything methods share: the model and its adapter, placement, accumulation, the
schedule, checkpoints, resume, early stopping and the saved weights. An objective owns the rest: how a prepared
row becomes an example, examples a batch, and a batch a summed loss. A new method (ORPO, KTO, online DPO, GRPO, a
reward model) is a class that satisfies `Objective` and one entry in `METHODS`, keyed by its `train.method` name,
plus that name in `config.TrainConfig.method`.

`METHODS` also says which rows a method learns from, so that `pipeline.py` can refuse data that does not fit the
method before a run is created, rather than at its first training step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from specialize.errors import DataError

if TYPE_CHECKING:
    import torch

    from specialize.config import TrainConfig
    from specialize.data import Example

E = TypeVar("E")
Batch = dict[str, "torch.Tensor"]


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
        """The summed loss of a batch, to be backpropagated."""
        ...

    def validation(self, model: Any, examples: list[E]) -> float:
        """The figure early stopping and the result report: lower is better."""
        ...


@dataclass(frozen=True)
class Method:
    """A `train.method`: the rows it learns from and how its objective is built."""

    rows: frozenset[str]  # the `data.Example.kind`s it learns from
    needs: str  # those rows, as a user reads it in an error
    build: Callable[[TrainConfig, int], Objective[Any]]  # (the train section, the pad token id) -> objective


def _supervised(config: TrainConfig, pad_id: int) -> Objective[Any]:
    from specialize.train.supervised import SupervisedObjective

    return SupervisedObjective(pad_id, config.batch_size)


def _preference(config: TrainConfig, pad_id: int) -> Objective[Any]:
    from specialize.train.preference import PreferenceObjective

    return PreferenceObjective(config.dpo_beta, pad_id, config.batch_size)


METHODS: dict[str, Method] = {
    "sft": Method(frozenset({"chat", "preference", "text"}), "any rows", _supervised),
    "dpo": Method(frozenset({"preference"}), "preference pairs (prompt, chosen, rejected)", _preference),
}
ROW_KINDS = {
    "chat": "a conversation with no rejected answer",
    "preference": "a preference pair",
    "text": "plain text",
}


def objective_for(config: TrainConfig, pad_id: int) -> Objective[Any]:
    """The objective of `config.method`."""
    return METHODS[config.method].build(config, pad_id)


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
                f"{ROW_KINDS[example.kind]}. Use train.method sft for such data"
            )
