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


BENCHMARK_CONFIGS = sorted(
    (Path(__file__).resolve().parents[1] / "benchmarks" / "eval_configs").glob("*.yaml")
)


@pytest.mark.parametrize("path", BENCHMARK_CONFIGS, ids=lambda p: p.name)
def test_benchmark_eval_config_is_valid(path):
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith(f"# specialize run benchmarks/eval_configs/{path.name}")
    config = load_config(path)
    assert set(config.eval.systems) >= {"base_rag", "fine_tuned", "fine_tuned_rag"}
    if not config.data.train.exists():
        pytest.skip(f"the shared datasets are not next to this checkout ({config.data.train})")
    train, validation = load_examples(config.data)
    assert validation and {e.label for e in validation} <= {e.label for e in train}


PREFERENCE_CONFIGS = sorted(
    (Path(__file__).resolve().parents[1] / "benchmarks" / "preference_configs").glob("*.yaml")
)


@pytest.mark.parametrize("path", PREFERENCE_CONFIGS, ids=lambda p: p.name)
def test_preference_benchmark_config_is_valid(path):
    from specialize.train import check_rows

    assert path.read_text(encoding="utf-8").startswith(
        f"# specialize run benchmarks/preference_configs/{path.name}"
    )
    config = load_config(path)
    assert config.eval.systems == ["base_zero_shot", "fine_tuned"]
    if not config.data.train.exists():
        pytest.skip(f"{config.data.train} is not on this machine")
    train, validation = load_examples(config.data)
    check_rows(config.train.method, [*train, *(validation or [])])
