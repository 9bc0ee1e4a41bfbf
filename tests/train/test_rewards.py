"""Rewards: the built-in verifiers, a user function, the checks on what a reward returns, and the rows it needs."""

from __future__ import annotations

import pytest
from conftest import chat_row

from specialize.config import (
    ExactMatchReward,
    FunctionReward,
    LabelReward,
    ModelReward,
    NumberReward,
    RunConfig,
)
from specialize.errors import ConfigError, DataError, RewardError, RunNotFoundError
from specialize.train.rewards import (
    Scored,
    answer_number,
    build_reward,
    prompt_of,
    reference_of,
    score_answers,
)

GSM = chat_row("Sara buys shoes for $50 and a dress for $200. Twice that?", "2 * 250 = 500\n#### 1,000")
GSM["source"] = "gsm.jsonl:3"


def scored(completion: str, row: dict) -> Scored:
    return Scored(prompt_of(row), completion, row)


def test_number_verifier_strict_wants_the_marked_line_lenient_the_last_number():
    strict = build_reward(NumberReward(type="number", form="strict"))
    lenient = build_reward(NumberReward(type="number", form="lenient"))
    answers = [
        "So the answer is\n#### 1000",
        "#### $1,000.00",
        "twice is 1000",
        "#### 999 then 1000",
        "no idea",
    ]
    assert score_answers(strict, [scored(a, GSM) for a in answers]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert score_answers(lenient, [scored(a, GSM) for a in answers]) == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert answer_number("a 1,250.50 b", strict=False) == answer_number("#### 1250.5", strict=True)


def test_label_and_exact_match_verifiers_ignore_case_spacing_and_outer_punctuation():
    row = chat_row("Label this: where is my parcel", "shipping", "shipping", source="c.jsonl:1")
    label = build_reward(LabelReward(type="label"))
    assert score_answers(label, [scored(a, row) for a in ("Shipping.", " shipping ", "billing")]) == [1, 1, 0]
    exact = build_reward(ExactMatchReward(type="exact_match"))
    pair = {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Paris"}],
        "rejected": [{"role": "assistant", "content": "Lyon"}],
        "source": "p.jsonl:1",
    }
    assert reference_of(pair) == "Paris" and prompt_of(pair) == pair["prompt"]
    assert score_answers(exact, [scored("paris!", pair), scored("Lyon", pair)]) == [1.0, 0.0]


def test_a_verifier_names_the_first_row_it_cannot_score():
    no_label = chat_row("hi", "hello", source="c.jsonl:4")
    with pytest.raises(DataError, match=r"c\.jsonl:4: reward label needs a gold 'label'"):
        build_reward(LabelReward(type="label")).check([no_label])
    with pytest.raises(
        DataError, match=r"c\.jsonl:4: reward number \(strict\) needs a reference answer with"
    ):
        build_reward(NumberReward(type="number")).check([GSM, no_label])
    bad = {"prompt": [], "completion": [{"role": "assistant", "content": "x"}], "desirable": False}
    with pytest.raises(DataError, match="needs a reference answer"):
        build_reward(ExactMatchReward(type="exact_match")).check([{**bad, "source": "f.jsonl:2"}])


def test_a_user_function_gets_prompt_completion_and_row(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def length_and_label(prompt, completion, row):\n"
        "    return len(completion) + (prompt[-1]['role'] == 'user') + len(row['label'])\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)  # found in the current folder, as `python -m` would
    reward = build_reward(FunctionReward(type="function", function="my_rewards:length_and_label"))
    row = chat_row("q", "a", "ab")
    assert score_answers(reward, [scored("xyz", row)]) == [3 + 1 + 2]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("broken", r"reward function toy_rewards:broken raised KeyError: 'answer' on row q\.jsonl:5; fix"),
        (
            "wordy",
            r"reward function toy_rewards:wordy returned 'high' \(str\) for row q\.jsonl:5; a reward must",
        ),
        ("undefined", r"returned nan \(float\) for row q\.jsonl:5; a reward must be a finite number"),
    ],
)
def test_a_reward_that_raises_or_returns_no_number_names_the_reward_and_the_row(name, message):
    reward = build_reward(FunctionReward(type="function", function=f"toy_rewards:{name}"))
    with pytest.raises(RewardError, match=message):
        score_answers(reward, [scored("answer", chat_row("q", "a", source="q.jsonl:5"))])


def test_a_function_that_cannot_be_imported_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot import no_such_module_here"):
        build_reward(FunctionReward(type="function", function="no_such_module_here:f"))
    with pytest.raises(ConfigError, match="toy_rewards has no function missing"):
        build_reward(FunctionReward(type="function", function="toy_rewards:missing"))


def test_a_reward_model_names_a_run_that_is_missing_or_not_a_reward_model(tmp_path, finish_run):
    with pytest.raises(RunNotFoundError):
        build_reward(ModelReward(type="model", run="nope"), f"sqlite:///{tmp_path / 'registry.db'}")
    sft = finish_run(eval={"systems": ["fine_tuned"], "max_examples": 2})
    with pytest.raises(ConfigError, match="was trained with train.method sft, not a reward model"):
        build_reward(ModelReward(type="model", run=str(sft.run_dir.root)))


def test_the_reward_section_is_checked_by_type():
    base = {"data": {"train": "t.jsonl"}}
    config = RunConfig.model_validate({**base, "reward": {"type": "number", "form": "lenient"}})
    assert isinstance(config.reward, NumberReward) and config.reward.form == "lenient"
    with pytest.raises(ValueError, match="does not match any of the expected tags"):
        RunConfig.model_validate({**base, "reward": {"type": "vibes"}})
    with pytest.raises(ValueError, match="extra"):
        RunConfig.model_validate({**base, "reward": {"type": "label", "form": "strict"}})
    with pytest.raises(ValueError, match="no reward: section"):
        RunConfig.model_validate({**base, "train": {"method": "grpo"}})
