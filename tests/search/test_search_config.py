"""The `search:` section: each key a dotted config path with a distribution; mistakes are one-line errors."""

from __future__ import annotations

import pytest

from specialize.cli.commands import parse_duration
from specialize.cli.main import main
from specialize.config import load_config, load_resolved, save_resolved
from specialize.errors import ConfigError
from specialize.search import apply, default_space, space_of


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        (
            {"train.lora.rnk": {"choice": [4, 8]}},
            "search.train.lora.rnk: unknown config key (did you mean 'train.lora.rank'?)",
        ),
        (
            {"train.learning_rate": {"log_uniform": [0, 1e-3]}},
            "search.train.learning_rate: log_uniform needs lo > 0",
        ),
        ({"train.epochs": {"uniform": [3, 1]}}, "search.train.epochs: uniform needs lo < hi"),
        ({"train.batch_size": {"int": [1.5, 4]}}, "search.train.batch_size: int needs two integers"),
        ({"train.batch_size": {"normal": [1, 4]}}, "search.train.batch_size: a distribution is one of"),
        ({"train.lora.rank": {"choice": [0, 8]}}, "search.train.lora.rank: 0 is not a valid value here"),
        ({"train.device": {"choice": ["cpu"]}}, "search.train.device: cannot be searched"),
        ({"data.max_tokens": {"int": [64, 128]}}, "only data.max_train_examples can vary"),
        ({"eval.rag_k": {"int": [1, 4]}}, "search.eval.rag_k: cannot be searched"),
        ({"train.lora": {"choice": [1]}}, "train.lora is a section; search one of its values"),
    ],
)
def test_a_bad_search_section_is_a_config_error_naming_the_key(config_factory, search, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(config_factory(search=search))
    assert expected in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_every_bad_key_is_reported_at_once_and_the_cli_prints_one_line_each(config_factory, capsys):
    path = config_factory(search={"train.lora.rnk": {"choice": [4]}, "train.device": {"choice": ["cpu"]}})
    assert main(["tune", str(path), "--budget", "1m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith(f"error: {path}: search.train.") for line in err)


def test_the_issue_spelling_reads_as_numbers_and_round_trips_through_the_resolved_config(
    config_factory, tmp_path
):
    # YAML 1.1 reads 1e-5 (no dot) as text; the range still means numbers.
    path = config_factory()
    path.write_text(
        path.read_text() + "search:\n  train.learning_rate: {log_uniform: [1e-5, 3e-3]}\n"
        "  train.lora.rank: {choice: [4, 8, 16, 32]}\n  data.max_train_examples: {int: [12, 48]}\n"
    )
    config = load_config(path)
    assert config.search is not None
    assert config.search["train.learning_rate"].values == [1e-5, 3e-3]
    save_resolved(config, tmp_path / "resolved.yaml")
    assert load_resolved(tmp_path / "resolved.yaml").search == config.search
    assert "log_uniform:" in (tmp_path / "resolved.yaml").read_text()


def test_the_default_space_fits_the_method_and_applies_to_the_config(config_factory):
    config = load_config(config_factory())
    space = space_of(config)
    assert space == default_space(config) and "train.lora.rank" in space and "train.dpo_beta" not in space
    assert "train.lora.rank" not in default_space(
        config.model_copy(update={"train": config.train.model_copy(update={"adapter": None})})
    )
    tuned = apply(
        config, {"train.lora.rank": 4, "train.learning_rate": 1e-3, "data.max_train_examples": 12}, name="x"
    )
    assert (tuned.train.lora.rank, tuned.train.learning_rate, tuned.data.max_train_examples) == (4, 1e-3, 12)
    assert tuned.name == "x" and tuned.search is None and tuned.train.batch_size == config.train.batch_size


@pytest.mark.parametrize(("text", "seconds"), [("45m", 2700), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400)])
def test_budgets_read_with_their_unit(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["45", "0m", "soon", "-5m"])
def test_a_budget_without_a_unit_is_an_error(text):
    with pytest.raises(ConfigError, match="--budget"):
        parse_duration(text)


def test_tune_without_a_budget_says_what_to_pass(config_factory, capsys):
    assert main(["tune", str(config_factory())]) == 2
    assert "needs --budget" in capsys.readouterr().err
