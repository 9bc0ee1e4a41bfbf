"""Every `train.method` a config accepts has an objective, and says which rows it learns from."""

from __future__ import annotations

from typing import get_args

import pytest

from specialize.config import ON_POLICY, LabelReward, TrainConfig
from specialize.data import Example
from specialize.errors import ConfigError, DataError
from specialize.train import METHODS, check_rows
from specialize.train.objective import objective_for
from specialize.train.rewards import build_reward


def test_every_configurable_method_is_registered() -> None:
    assert set(METHODS) == set(get_args(TrainConfig.model_fields["method"].annotation))
    for method in METHODS:
        reward = build_reward(LabelReward(type="label")) if method in ON_POLICY else None
        objective = objective_for(TrainConfig(method=method), pad_id=0, reward=reward)
        assert all(
            callable(getattr(objective, name))
            for name in ("encode", "length", "collate", "count", "loss", "drain", "validation")
        )


@pytest.mark.parametrize("method", ON_POLICY)
def test_an_on_policy_method_without_a_reward_says_what_to_add(method: str) -> None:
    with pytest.raises(ConfigError, match="reward: section"):
        objective_for(TrainConfig(method=method), pad_id=0)


def test_rows_a_method_cannot_learn_from_are_named() -> None:
    chat = Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "t.jsonl", 7)
    pair = Example(chat.messages, "t.jsonl", 8, rejected=[{"role": "assistant", "content": "b"}], n_chosen=1)

    rated = Example(chat.messages, "t.jsonl", 9, n_chosen=1, desirable=False)

    check_rows("sft", [chat, pair])
    check_rows("dpo", [pair])
    check_rows("kto", [rated, pair])
    check_rows("grpo", [chat, pair, rated])
    with pytest.raises(
        DataError, match=r"t\.jsonl:7: train\.method dpo needs preference pairs.*train\.method sft"
    ):
        check_rows("dpo", [pair, chat])
    with pytest.raises(
        DataError, match=r"t\.jsonl:9: train\.method sft .* rated good or bad.*train\.method kto"
    ):
        check_rows("sft", [rated])
    with pytest.raises(DataError, match=r"t\.jsonl:7: train\.method kto needs answers rated"):
        check_rows("kto", [chat])
