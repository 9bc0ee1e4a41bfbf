"""Every `train.method` a config accepts has an objective, and says which rows it learns from."""

from __future__ import annotations

from typing import get_args

import pytest

from specialize.config import TrainConfig
from specialize.data import Example
from specialize.errors import DataError
from specialize.train import METHODS, check_rows
from specialize.train.objective import objective_for


def test_every_configurable_method_is_registered() -> None:
    assert set(METHODS) == set(get_args(TrainConfig.model_fields["method"].annotation))
    for method in METHODS:
        objective = objective_for(TrainConfig(method=method), pad_id=0)
        assert all(callable(getattr(objective, name)) for name in ("encode", "collate", "count", "loss"))


def test_rows_a_method_cannot_learn_from_are_named() -> None:
    chat = Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "t.jsonl", 7)
    pair = Example(chat.messages, "t.jsonl", 8, rejected=[{"role": "assistant", "content": "b"}], n_chosen=1)

    check_rows("sft", [chat, pair])
    check_rows("dpo", [pair])
    with pytest.raises(
        DataError, match=r"t\.jsonl:7: train\.method dpo needs preference pairs.*train\.method sft"
    ):
        check_rows("dpo", [pair, chat])
