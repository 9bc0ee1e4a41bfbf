"""Reading, validating and saving run configs: every mistake is named, all at once."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from specialize.config import RunConfig, load_config, save_resolved
from specialize.errors import ConfigError


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: pathlib.Path | None, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_valid_config_loads_with_defaults(run_config: pathlib.Path, tiny_model_dir: pathlib.Path) -> None:
    config = load_config(run_config)

    assert isinstance(config, RunConfig)
    assert config.name == "tiny"
    assert config.base_model == str(tiny_model_dir)
    assert config.train.max_steps == 3
    assert config.train.batch_size == 4
    assert config.eval.max_examples == 8
    assert config.train.lora.rank == RunConfig.model_fields["train"].default_factory().lora.rank
    assert config.registry_url == f"sqlite:///{(config.runs_dir / 'registry.db').as_posix()}"


def test_name_defaults_to_the_file_stem(config_factory) -> None:
    path = config_factory("my-run.yaml")
    text = path.read_text(encoding="utf-8").replace("name: tiny\n", "")
    path.write_text(text, encoding="utf-8")

    assert load_config(path).name == "my-run"


def test_unknown_key_is_named_with_the_close_match(config_factory) -> None:
    path = config_factory(train={"learning_rte": 1e-4})

    message = _error(path)

    assert "train.learning_rte" in message
    assert "learning_rate" in message
    assert str(path) in message


def test_nested_unknown_key_is_named_with_the_close_match(config_factory) -> None:
    message = _error(config_factory(train={"lora": {"rnk": 8}}))

    assert "train.lora.rnk" in message
    assert "'rank'" in message


def test_unknown_top_level_key_is_named(config_factory) -> None:
    assert "base_modle" in _error(config_factory(base_modle="x"))


def test_wrong_value_type_names_the_key_and_value(config_factory) -> None:
    message = _error(config_factory(train={"batch_size": "eight"}))

    assert "train.batch_size" in message
    assert "eight" in message


def test_out_of_range_value_names_the_key(config_factory) -> None:
    assert "train.learning_rate" in _error(config_factory(train={"learning_rate": -1}))


def test_every_problem_is_reported_at_once(config_factory) -> None:
    path = config_factory(train={"learning_rte": 1e-4, "batch_size": "eight"}, eval={"few_shot_kk": 2})

    lines = _error(path).splitlines()

    assert any("train.learning_rte" in line for line in lines)
    assert any("train.batch_size" in line for line in lines)
    assert any("eval.few_shot_kk" in line for line in lines)
    assert len(lines) == 3


def test_set_overrides_are_dotted_and_typed(run_config: pathlib.Path) -> None:
    config = load_config(
        run_config,
        [
            "train.learning_rate=1e-4",
            "train.batch_size=2",
            "train.lora.rank=4",
            "eval.systems=[fine_tuned]",
            "train.adapter=null",
            "seed=7",
        ],
    )

    assert isinstance(config.train.learning_rate, float)
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.train.batch_size == 2
    assert config.train.lora.rank == 4
    assert config.eval.systems == ["fine_tuned"]
    assert config.train.adapter is None
    assert config.seed == 7
    assert config.train.max_steps == 3  # untouched values keep the file's


def test_set_value_with_a_colon_stays_a_string(run_config: pathlib.Path) -> None:
    # Overrides are "parsed as YAML scalars": a prompt that contains ": " must not turn into a mapping.
    prompt = "Reply with one label: billing, shipping or spam"

    config = load_config(run_config, [f"data.system_prompt={prompt}"])

    assert config.data.system_prompt == prompt


def test_set_override_with_a_wrong_type_names_the_key(run_config: pathlib.Path) -> None:
    message = _error(run_config, ["train.batch_size=eight"])

    assert "train.batch_size" in message
    assert "eight" in message


def test_set_unknown_key_is_named(run_config: pathlib.Path) -> None:
    message = _error(run_config, ["train.learning_rte=1e-4"])

    assert "train.learning_rte" in message
    assert "learning_rate" in message


@pytest.mark.parametrize("item", ["train.learning_rate", "=3", "  =3"])
def test_bad_set_syntax_is_explained(run_config: pathlib.Path, item: str) -> None:
    message = _error(run_config, [item])

    assert item in message
    assert "KEY=VALUE" in message


def test_set_into_a_value_is_explained(run_config: pathlib.Path) -> None:
    message = _error(run_config, ["train.batch_size.x=1"])

    assert "batch_size" in message


def test_missing_data_train_is_named(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "run.yaml", "name: x\ndata:\n  validation: v.jsonl\n")

    message = _error(path)

    assert "data.train" in message
    assert "missing" in message


def test_missing_data_section_is_named(tmp_path: pathlib.Path) -> None:
    assert "data" in _error(_write(tmp_path / "run.yaml", "name: x\n"))


def test_data_train_can_come_from_set_alone(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    config = load_config(None, ["data.train=d/train.jsonl"])

    assert config.data.train == tmp_path / "d" / "train.jsonl"


def test_relative_data_paths_resolve_against_the_config_folder(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    path = _write(folder / "run.yaml", "data:\n  train: data/train.jsonl\n  validation: ../v.jsonl\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(path)

    assert config.data.train == folder.resolve() / "data" / "train.jsonl"
    assert config.data.validation is not None
    assert config.data.validation.resolve() == (tmp_path / "v.jsonl").resolve()


def test_absolute_data_paths_are_kept(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "abs" / "train.jsonl"
    path = _write(tmp_path / "run.yaml", f"data:\n  train: {target}\n")

    assert load_config(path).data.train == target


def test_invalid_yaml_names_the_file_and_line(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "run.yaml", "name: x\ndata:\n  train: a.jsonl\n  bad: x: y\n")

    message = _error(path)

    assert f"{path}:4" in message
    assert "YAML" in message


def test_missing_config_file_is_named(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.yaml"

    assert str(path) in _error(path)


def test_top_level_must_be_a_mapping(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "run.yaml", "- a\n- b\n")

    assert str(path) in _error(path)


def test_save_resolved_writes_every_default_and_provenance(
    run_config: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    config = load_config(run_config)
    out = tmp_path / "config.resolved.yaml"

    save_resolved(config, out)

    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    dumped = config.model_dump(mode="json")
    assert {k: v for k, v in doc.items() if k != "_provenance"} == dumped
    for section, model in (("data", "DataConfig"), ("train", "TrainConfig"), ("eval", "EvalConfig")):
        assert set(doc[section]) == set(type(getattr(config, section)).model_fields), model
    assert set(doc["train"]["lora"]) == set(type(config.train.lora).model_fields)
    assert doc["train"]["learning_rate"] == config.train.learning_rate
    assert doc["data"]["train"] == str(config.data.train)
    provenance = doc["_provenance"]
    assert {"specialize", "torch", "transformers", "peft", "python"} <= set(provenance["packages"])
    assert "git_revision" in provenance
    assert not list(tmp_path.glob("*.tmp"))


def test_resolved_config_loads_back_to_the_same_config(
    run_config: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    config = load_config(run_config)
    out = tmp_path / "resolved" / "config.resolved.yaml"
    out.parent.mkdir()
    save_resolved(config, out)
    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    doc.pop("_provenance")
    out.write_text(yaml.safe_dump(doc), encoding="utf-8")

    assert load_config(out) == config


def test_data_path_given_with_set_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    config_path = tmp_path / "conf" / "run.yaml"
    config_path.write_text("data: {train: in_conf.jsonl}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_config(config_path).data.train == tmp_path / "conf" / "in_conf.jsonl"
    assert load_config(config_path, ["data.train=typed.jsonl"]).data.train == tmp_path / "typed.jsonl"


def test_rag_documents_resolve_against_the_config_folder(tmp_path: pathlib.Path) -> None:
    (tmp_path / "docs").mkdir()
    path = _write(tmp_path / "run.yaml", "data:\n  train: t.jsonl\neval:\n  rag_documents: docs\n")

    assert load_config(path).eval.rag_documents == tmp_path.resolve() / "docs"


def test_missing_rag_documents_folder_is_named_before_anything_runs(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "run.yaml", "data:\n  train: t.jsonl\neval:\n  rag_documents: nowhere\n")

    message = _error(path)

    assert "eval.rag_documents" in message and "nowhere" in message and "not a folder" in message


def test_few_shot_selection_is_checked(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "run.yaml", "data:\n  train: t.jsonl\neval:\n  few_shot_selection: nearest\n")

    assert "eval.few_shot_selection" in _error(path)
