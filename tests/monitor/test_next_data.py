"""A child's training file holds rows of one kind, the parent's, and the data stage reads it back whole."""

from __future__ import annotations

import json
import pathlib

import pytest
from conftest import chat_row, write_jsonl

from specialize.config import RunConfig
from specialize.data import read_examples
from specialize.monitor import build_next_data
from specialize.runs import Registry, RunDir


def pair(i: int) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"Is {i} even?"}],
        "chosen": [{"role": "assistant", "content": "yes" if i % 2 == 0 else "no"}],
        "rejected": [{"role": "assistant", "content": "maybe"}],
    }


def prepared_pair(i: int) -> dict:
    """A pair as `data/train.jsonl` holds it: the conversation for SFT too, and its source."""
    p = pair(i)
    return {"messages": p["prompt"] + p["chosen"], **p, "source": f"in.jsonl:{i}"}


@pytest.fixture
def parent(tmp_path: pathlib.Path):
    def make(train: list[dict], validation: list[dict]) -> tuple[Registry, RunDir, RunConfig]:
        run = RunDir.create(tmp_path / "runs", "parent-1")
        write_jsonl(run.data / "train.jsonl", train)
        write_jsonl(run.data / "validation.jsonl", validation)
        config = RunConfig.model_validate({"data": {"train": str(run.data / "train.jsonl")}})
        return Registry(f"sqlite:///{tmp_path / 'registry.db'}"), run, config

    return make


def test_a_pair_parent_gets_pairs_and_the_file_reads_as_pairs(parent, tmp_path):
    registry, run, config = parent(
        [prepared_pair(i) for i in range(20)], [prepared_pair(i) for i in range(100, 105)]
    )
    new = write_jsonl(tmp_path / "new.jsonl", [pair(i) for i in range(200, 230)])
    made = build_next_data(registry, run, config, frozenset({"preference"}), False, [new], None)
    assert made.counts["train_added"] == 30 and made.counts["held_out"] == 0  # pairs train; answers test
    loaded = read_examples(made.train)
    assert not loaded.problems and {e.kind for e in loaded.examples} == {"preference"}
    assert len(loaded.examples) == 20 + made.counts["train_added"]


def test_a_conversation_parent_takes_conversations_and_keeps_pairs_aside(parent, tmp_path):
    rows = [chat_row(f"Label this: order {i}", "billing", "billing") for i in range(20)]
    registry, run, config = parent(rows, [chat_row("Label this: order 999", "billing", "billing")])
    new = write_jsonl(
        tmp_path / "new.jsonl",
        [chat_row(f"Label this: parcel {i}", "shipping", "shipping") for i in range(10)] + [rows[0]],
    )
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(5)])
    made = build_next_data(
        registry, run, config, frozenset({"chat", "preference", "text"}), False, [new, pairs], None
    )
    assert made.counts["repeats_of_parent_data"] == 1 and made.counts["new_examples"] == 10
    loaded = read_examples(made.train)
    assert not loaded.problems and {e.kind for e in loaded.examples} == {"chat"}
    unused = [json.loads(line) for line in (made.directory / "unused.jsonl").read_text().splitlines()]
    assert len(unused) == 5 and all("rejected" in u for u in unused)
    assert made.counts["held_out"] + made.counts["train_added"] == 10
