"""Rewards: what the on-policy methods (online DPO, GRPO) learn from, and a metric of every evaluated system.

A reward scores a model's answer to a prompt, given the prepared row the prompt came from (the `reward:`
section of a run; `config.RewardConfig`):

- verifiers: `label` (the row's gold label), `number` (the final number of a GSM8K-style answer, in its strict
  `#### N` form or leniently the last number written), `exact_match` (the row's reference answer);
- `function`: the user's `module:function(prompt, completion, row) -> float`;
- `model`: a reward model trained by specialize with `train.method: reward` (`reward_model.py`);
- `judge`: an LLM at any OpenAI-compatible endpoint, scoring against a rubric (`judge.py`).

Every score goes through `score_answers`, so a reward that raises, or returns something other than a finite
number, stops with a `RewardError` that names the reward and the row, never a bare traceback from user code.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

from specialize.config import (
    ExactMatchReward,
    FunctionReward,
    JudgeReward,
    LabelReward,
    ModelReward,
    NumberReward,
    RewardConfig,
)
from specialize.errors import ConfigError, DataError, RewardError

# A number as people write answers: optional sign, thousands separators, decimals ("-1,250.50").
_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
NUMBER = re.compile(_NUMBER)
# GSM8K's answer line: "#### 1,250" (a currency sign tolerated before the number).
MARKED = re.compile(rf"####\s*\$?\s*({_NUMBER})")


@dataclass(frozen=True)
class Scored:
    """One answer to score: the conversation before it, its text, and the prepared row the prompt came from."""

    prompt: list[dict[str, str]]
    completion: str
    row: dict[str, Any]

    @property
    def where(self) -> str:
        return str(self.row.get("source", "a row without a source"))


class Reward(Protocol):
    """A scorer of answers; `score_answers` checks what it returns."""

    name: str  # how errors name it, e.g. "reward number (strict)"

    def check(self, rows: Sequence[dict[str, Any]]) -> None:
        """Raise a DataError naming the first row this reward cannot score (no label, no reference number)."""
        ...

    def score(self, items: Sequence[Scored]) -> list[Any]:
        """One raw score per item, in order."""
        ...


def score_answers(reward: Reward, items: Sequence[Scored]) -> list[float]:
    """The scores of `items` as floats.

    Raises:
        RewardError: the reward returned something other than a finite number (naming the reward and the row),
            or the wrong number of scores.
    """
    if not items:
        return []
    raw = reward.score(items)
    if len(raw) != len(items):
        raise RewardError(f"reward {reward.name} returned {len(raw)} scores for {len(items)} answers")
    return [_number(reward.name, value, item) for value, item in zip(raw, items, strict=True)]


def _number(name: str, value: Any, item: Scored) -> float:
    if isinstance(value, numbers.Real) and math.isfinite(float(value)):
        return float(value)
    shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
    raise RewardError(
        f"reward {name} returned {shown} ({type(value).__name__}) for row {item.where}; a reward must be a "
        "finite number (int or float)"
    )


def build_reward(config: RewardConfig, registry_url: str | None = None) -> Reward:
    """The reward a `reward:` section describes, checked as far as it can be without scoring.

    Args:
        config: the `reward:` section.
        registry_url: the registry a `model` reward's run id is looked up in.

    Raises:
        ConfigError: the function cannot be imported, or the reward model's run is not a finished reward run.
    """
    if isinstance(config, LabelReward):
        return LabelVerifier()
    if isinstance(config, NumberReward):
        return NumberVerifier(config.form == "strict")
    if isinstance(config, ExactMatchReward):
        return ExactMatchVerifier()
    if isinstance(config, FunctionReward):
        return FunctionScorer(config.function)
    if isinstance(config, ModelReward):
        from specialize.train.reward_model import RewardModelScorer

        return RewardModelScorer(config, registry_url)
    if isinstance(config, JudgeReward):
        from specialize.train.judge import Judge

        return Judge(config)
    raise ConfigError(f"reward.type {config.type!r} is not known")


def prompt_of(row: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation a prepared row's answer replies to: a pair's or a rated answer's prompt, or a
    conversation up to its last assistant turn."""
    if "prompt" in row:
        return list(row["prompt"])
    messages = list(row.get("messages") or [])
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    return messages


def reference_of(row: dict[str, Any]) -> str | None:
    """The row's reference answer: a pair's chosen answer, a good rated answer, or a conversation's last
    assistant turn; None when it has none (a bad rated answer)."""
    if "chosen" in row:
        answer = row["chosen"]
    elif "completion" in row:
        answer = row["completion"] if row.get("desirable") else []
    else:
        messages = row.get("messages") or []
        answer = messages[-1:] if messages and messages[-1]["role"] == "assistant" else []
    text = "\n".join(m["content"] for m in answer if m["role"] == "assistant")
    return text or None


def normalise(text: str) -> str:
    """Case, surrounding punctuation and runs of whitespace do not change an answer."""
    return " ".join(text.lower().strip().strip(".!?;:").split())


def answer_number(text: str, strict: bool) -> Decimal | None:
    """An answer's final number: strictly the one after the last `####`, leniently the last number written.

    Thousands separators are dropped and the value compared, so "1,250" and "1250.0" are the same answer.
    """
    found = MARKED.findall(text) if strict else NUMBER.findall(text)
    return _decimal(found[-1]) if found else None


def reference_number(text: str) -> Decimal | None:
    """A reference answer's number: its `#### N` line, else its last number."""
    return answer_number(text, strict=True) or answer_number(text, strict=False)


def _decimal(number: str) -> Decimal | None:
    try:
        return Decimal(number.replace(",", ""))
    except InvalidOperation:
        return None


class LabelVerifier:
    """1.0 when the answer is the row's gold label, else 0.0."""

    name = "label"

    def check(self, rows: Sequence[dict[str, Any]]) -> None:
        _first_without(rows, lambda r: r.get("label") is not None, self.name, "a gold 'label'")

    def score(self, items: Sequence[Scored]) -> list[Any]:
        return [float(normalise(i.completion) == normalise(str(i.row["label"]))) for i in items]


class NumberVerifier:
    """1.0 when the answer's final number equals the reference answer's, else 0.0."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.name = f"number ({'strict' if strict else 'lenient'})"

    def check(self, rows: Sequence[dict[str, Any]]) -> None:
        _first_without(
            rows,
            lambda r: reference_number(reference_of(r) or "") is not None,
            self.name,
            "a reference answer with a final number (`#### 42`, or a last number)",
        )

    def score(self, items: Sequence[Scored]) -> list[Any]:
        out = []
        for item in items:
            got = answer_number(item.completion, self.strict)
            out.append(float(got is not None and got == reference_number(reference_of(item.row) or "")))
        return out


class ExactMatchVerifier:
    """1.0 when the answer equals the row's reference answer (case and spacing aside), else 0.0."""

    name = "exact_match"

    def check(self, rows: Sequence[dict[str, Any]]) -> None:
        _first_without(rows, lambda r: reference_of(r) is not None, self.name, "a reference answer")

    def score(self, items: Sequence[Scored]) -> list[Any]:
        return [float(normalise(i.completion) == normalise(reference_of(i.row) or "")) for i in items]


class FunctionScorer:
    """The user's `module:function(prompt, completion, row)`, called once per answer."""

    def __init__(self, spec: str) -> None:
        self.name = f"function {spec}"
        self.spec = spec
        self.function = load_function(spec)

    def check(self, rows: Sequence[dict[str, Any]]) -> None:
        return None  # what a row must hold is the function's business

    def score(self, items: Sequence[Scored]) -> list[Any]:
        out = []
        for item in items:
            try:
                out.append(self.function(item.prompt, item.completion, item.row))
            except Exception as exc:  # the user's code: any failure is reported with the row it failed on
                raise RewardError(
                    f"reward function {self.spec} raised {type(exc).__name__}: {exc} on row {item.where}; fix "
                    "the function (it is called as function(prompt, completion, row))"
                ) from exc
        return out


def load_function(spec: str) -> Callable[..., Any]:
    """Import `module:function`, looking in the current folder too (as `python -m` would).

    Raises:
        ConfigError: the module or the function is not there, or the name is not callable.
    """
    module_name, _, attribute = spec.partition(":")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"reward.function {spec}: cannot import {module_name} ({exc}); put {module_name}.py in the current "
            "folder or on PYTHONPATH"
        ) from None
    except Exception as exc:  # the module's own code failed while importing
        raise ConfigError(
            f"reward.function {spec}: importing {module_name} failed with {type(exc).__name__}: {exc}"
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(
            f"reward.function {spec}: {module_name} has no function {attribute}; name a function that takes "
            "(prompt, completion, row) and returns a number"
        )
    return function  # type: ignore[no-any-return]


def _first_without(
    rows: Sequence[dict[str, Any]], has: Callable[[dict[str, Any]], bool], reward: str, what: str
) -> None:
    for row in rows:
        if not has(row):
            raise DataError(
                f"{row.get('source', 'a row')}: reward {reward} needs {what} in every row, and this row has "
                "none; fix the row, or choose another reward.type"
            )
