"""Reward functions for the on-policy tests, imported by name (`reward: {type: function, function: toy_rewards:...}`)."""

from __future__ import annotations

from typing import Any


def first_half(prompt: list[dict[str, str]], completion: str, row: dict[str, Any]) -> float:
    """1 when the answer starts with a letter from a to m: about 40% of the tiny model's first tokens at random,
    and a choice a policy can learn in a few steps."""
    return float(completion[:1].lower() in "abcdefghijklm")


def vowels(prompt: list[dict[str, str]], completion: str, row: dict[str, Any]) -> float:
    """The share of the answer's characters that are vowels: a graded reward, so groups rarely tie."""
    return sum(c in "aeiou" for c in completion) / max(len(completion), 1)


def broken(prompt: list[dict[str, str]], completion: str, row: dict[str, Any]) -> float:
    raise KeyError("answer")


def wordy(prompt: list[dict[str, str]], completion: str, row: dict[str, Any]) -> Any:
    return "high"


def undefined(prompt: list[dict[str, str]], completion: str, row: dict[str, Any]) -> float:
    return float("nan")
