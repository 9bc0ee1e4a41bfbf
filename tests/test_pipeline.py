"""The pipeline owns a run: inputs checked before it exists, stages in order, finished stages skipped on resume."""

from __future__ import annotations

import json

import pytest

from specialize.config import load_config
from specialize.errors import DataError
from specialize.pipeline import prepare_run, resume, run
from specialize.runs import Registry


def _left_in(config) -> list[str]:
    return sorted(p.name for p in config.runs_dir.iterdir() if p.name != "registry.db")


def test_a_data_error_found_while_preparing_leaves_no_run(config_factory, chat_dataset) -> None:
    # Every training row is also a validation row: cleaning removes them all, inside the staged run directory.
    chat_dataset.validation.write_text(chat_dataset.train.read_text(encoding="utf-8"), encoding="utf-8")
    config = load_config(config_factory())

    with pytest.raises(DataError, match="0 training"):
        run(config, progress=False)

    assert _left_in(config) == [], "the staged .partial directory is removed"
    assert Registry(config.registry_url).list_runs() == []


def test_stages_run_in_order_and_are_recorded(config_factory) -> None:
    config = load_config(config_factory())

    result = run(config, progress=False)

    registry = Registry(config.registry_url)
    assert registry.get_run(result.run_id)["status"] == "completed"
    assert _left_in(config) == [result.run_id]
    kinds = [a["kind"] for a in registry.get_artifacts(result.run_id)]
    assert kinds == [
        *("train_split", "validation_split", "rejects", "audit"),
        *("adapter", "report", "model_card"),
    ]
    stages = list(dict.fromkeys(m["stage"] for m in registry.get_metrics(result.run_id)))
    assert stages == ["data", "train", "eval"]


def test_resume_skips_the_finished_training_and_evaluates_again(config_factory) -> None:
    config = load_config(config_factory())
    first = run(config, progress=False)
    registry = Registry(config.registry_url)
    adapter = first.train.output_dir / "adapter_model.safetensors"
    weights, written = adapter.read_bytes(), adapter.stat().st_mtime_ns
    metrics = (first.run_dir.train / "metrics.jsonl").read_text()
    train_rows = registry.get_metrics(first.run_id, "train")
    # A run that died during evaluation: trained, no report yet.
    first.eval.report_path.unlink()
    registry.finish_run(first.run_id, "failed", error="KeyboardInterrupt: ")

    again = resume(first.run_id, config.registry_url, progress=False)

    assert adapter.read_bytes() == weights and adapter.stat().st_mtime_ns == written
    assert (first.run_dir.train / "metrics.jsonl").read_text() == metrics
    assert registry.get_metrics(first.run_id, "train") == train_rows, "training logged nothing new"
    assert again.train == first.train
    assert json.loads(again.eval.report_path.read_text())["systems"].keys() == first.eval.metrics.keys()
    assert registry.get_run(first.run_id)["status"] == "completed"


def test_prepare_run_into_a_folder_creates_no_run(config_factory, tmp_path) -> None:
    config = load_config(config_factory())

    data, run_id = prepare_run(config, tmp_path / "prepared")

    assert run_id is None and data.directory == tmp_path / "prepared"
    assert (data.n_train, data.n_validation) == (48, 12) and data.audit_path.is_file()
    assert not config.runs_dir.exists()
