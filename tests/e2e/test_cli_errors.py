"""User mistakes through `specialize run`: a named `error:` line, a non-zero exit, nothing left behind."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from specialize.cli.main import main
from specialize.config import load_config
from specialize.errors import ConfigError, DataError, ModelNotFoundError
from specialize.runs import Registry


@dataclass(frozen=True)
class Mistake:
    """How to break the default run, what stderr must name, and the exit code of the error class."""

    make: Callable[..., list[str]]  # (config_factory, tmp_path, chat_dataset) -> extra CLI args after CONFIG
    names: tuple[str, ...]
    exit_code: int


def _malformed_line(config_factory, tmp_path, chat_dataset) -> list[str]:
    lines = chat_dataset.train.read_text(encoding="utf-8").splitlines()
    lines[2] = '{"messages": [{"role": "user", "content": "unterminated'
    chat_dataset.train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [str(config_factory())]


def _missing_file(config_factory, tmp_path, chat_dataset) -> list[str]:
    return [str(config_factory(data={"train": "data/no-such-file.jsonl"}))]


def _unknown_key(config_factory, tmp_path, chat_dataset) -> list[str]:
    return [str(config_factory(train={"learning_rte": 1e-4}))]


def _wrong_type(config_factory, tmp_path, chat_dataset) -> list[str]:
    return [str(config_factory(train={"batch_size": "eight"}))]


def _unknown_model(config_factory, tmp_path, chat_dataset) -> list[str]:
    return [str(config_factory(base_model="smollm3-135m"))]


def _missing_model_dir(config_factory, tmp_path, chat_dataset) -> list[str]:
    return [str(config_factory(base_model=str(tmp_path / "models" / "nope")))]


def _bad_set(config_factory, tmp_path, chat_dataset) -> list[str]:
    return [str(config_factory()), "--set", "train.batch_size"]


def _set_unknown_key(config_factory, tmp_path, chat_dataset) -> list[str]:
    return [str(config_factory()), "--set", "eval.few_shot=2"]


def _missing_config(config_factory, tmp_path, chat_dataset) -> list[str]:
    config_factory()  # the data and runs_dir exist; only the config path is wrong
    return [str(tmp_path / "missing.yaml")]


def _all_training_rows_leak(config_factory, tmp_path, chat_dataset) -> list[str]:
    # Found only while preparing the data, after the registry and the staging directory exist.
    chat_dataset.validation.write_text(chat_dataset.train.read_text(encoding="utf-8"), encoding="utf-8")
    return [str(config_factory())]


MISTAKES = {
    "malformed-jsonl-line": Mistake(_malformed_line, ("train.jsonl:3", "JSON"), DataError.exit_code),
    "missing-data-file": Mistake(_missing_file, ("no-such-file.jsonl",), DataError.exit_code),
    "unknown-config-key": Mistake(
        _unknown_key, ("train.learning_rte", "learning_rate"), ConfigError.exit_code
    ),
    "wrong-value-type": Mistake(_wrong_type, ("train.batch_size", "eight"), ConfigError.exit_code),
    "unknown-base-model": Mistake(
        _unknown_model, ("smollm3-135m", "smollm2-135m-instruct", "models list"), ModelNotFoundError.exit_code
    ),
    "missing-model-directory": Mistake(_missing_model_dir, ("nope",), ModelNotFoundError.exit_code),
    "bad-set-syntax": Mistake(_bad_set, ("train.batch_size", "KEY=VALUE"), ConfigError.exit_code),
    "set-unknown-key": Mistake(_set_unknown_key, ("eval.few_shot", "few_shot_k"), ConfigError.exit_code),
    "missing-config-file": Mistake(_missing_config, ("missing.yaml",), ConfigError.exit_code),
    "no-training-rows-left": Mistake(_all_training_rows_leak, ("0 training",), DataError.exit_code),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_mistake_is_named_and_leaves_no_run(
    case: str, config_factory, tmp_path: pathlib.Path, chat_dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    mistake = MISTAKES[case]
    args = mistake.make(config_factory, tmp_path, chat_dataset)

    code = main(["--quiet", "run", *args])

    out, err = capsys.readouterr()
    assert code == mistake.exit_code != 0
    lines = err.splitlines()
    assert lines, "no error message"
    assert all(line.startswith("error: ") for line in lines), err
    assert "Traceback" not in err
    for name in mistake.names:
        assert name in err, f"{name!r} not in {err!r}"
    assert out == ""
    _assert_no_run_left(tmp_path / "runs")


def _assert_no_run_left(runs_dir: pathlib.Path) -> None:
    if not runs_dir.exists():
        return
    leftovers = [p.name for p in runs_dir.iterdir() if p.name != "registry.db"]
    assert leftovers == [], f"a failed run left {leftovers} in {runs_dir}"
    if (runs_dir / "registry.db").exists():
        assert Registry(f"sqlite:///{(runs_dir / 'registry.db').as_posix()}").list_runs() == []


def test_errors_name_every_bad_line_of_both_files(
    config_factory, chat_dataset, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = chat_dataset.train.read_text(encoding="utf-8").splitlines()
    train[1] = "not json"
    train[4] = '{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "spam"}]}'
    chat_dataset.train.write_text("\n".join(train) + "\n", encoding="utf-8")
    validation = chat_dataset.validation.read_text(encoding="utf-8").splitlines()
    validation[0] = '{"messages": [{"role": "user", "content": "only a question"}], "label": "spam"}'
    chat_dataset.validation.write_text("\n".join(validation) + "\n", encoding="utf-8")

    code = main(["--quiet", "run", str(config_factory())])

    err = capsys.readouterr().err
    assert code == DataError.exit_code
    assert all(line.startswith("error: ") for line in err.splitlines())
    for where in (f"{chat_dataset.train}:2:", f"{chat_dataset.train}:5:", f"{chat_dataset.validation}:1:"):
        assert where in err
    _assert_no_run_left(tmp_path / "runs")


def test_debug_shows_the_traceback(config_factory) -> None:
    with pytest.raises(ConfigError):
        main(["--debug", "--quiet", "run", str(config_factory(train={"learning_rte": 1}))])


def test_the_config_of_an_error_case_is_otherwise_valid(config_factory) -> None:
    # Guards the cases above: each breaks exactly one thing in a config that loads.
    assert load_config(config_factory()).train.max_steps == 3
