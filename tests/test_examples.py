"""Every shipped config loads, names data that exists, and that data passes validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from specialize.config import load_config
from specialize.data import load_examples

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "src" / "specialize" / "examples").glob("*.yaml"))


def test_there_is_a_bundled_example():
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("# specialize run examples/"), "a shipped config starts with its command"
    config = load_config(path)
    train, validation = load_examples(config.data)
    assert len(train) > 100 and validation and len(validation) > 50
    assert {e.label for e in validation} <= {e.label for e in train}
