"""Run directories and the run registry on a SQLite file."""

from __future__ import annotations

import datetime
import json
import pathlib
import re

import pytest

from specialize.errors import RunNotFoundError
from specialize.runs import RUN_SUBDIRS, Registry, RunDir, build_run_dir, new_run_id, write_atomic


@pytest.fixture
def registry(tmp_path: pathlib.Path) -> Registry:
    return Registry(f"sqlite:///{(tmp_path / 'nested' / 'registry.db').as_posix()}")


def _run(tmp_path: pathlib.Path, run_id: str) -> RunDir:
    return RunDir.create(tmp_path / "runs", run_id)


def test_registry_file_and_its_folder_are_created(tmp_path: pathlib.Path, registry: Registry) -> None:
    assert (tmp_path / "nested" / "registry.db").is_file()
    assert registry.list_runs() == []


def test_run_round_trip(tmp_path: pathlib.Path, registry: Registry) -> None:
    run = _run(tmp_path, "demo-1")
    config = {"name": "demo", "train": {"batch_size": 4}}

    registry.create_run(run, "demo", "tiny", config)
    row = registry.get_run("demo-1")

    assert row["id"] == "demo-1"
    assert row["name"] == "demo"
    assert row["status"] == "running"
    assert row["base_model"] == "tiny"
    assert pathlib.Path(row["run_dir"]) == run.root.resolve()
    assert row["parent_run"] is None
    assert row["error"] is None
    assert row["finished_at"] is None
    assert isinstance(row["created_at"], datetime.datetime)
    assert json.loads(row["config"]) == config


def test_finish_run_records_status_error_and_time(tmp_path: pathlib.Path, registry: Registry) -> None:
    registry.create_run(_run(tmp_path, "ok"), "ok", "tiny", {})
    registry.create_run(_run(tmp_path, "bad"), "bad", "tiny", {})

    registry.finish_run("ok", "completed")
    registry.finish_run("bad", "failed", error="TrainingError: loss became nan")

    ok, bad = registry.get_run("ok"), registry.get_run("bad")
    assert (ok["status"], ok["error"]) == ("completed", None)
    assert (bad["status"], bad["error"]) == ("failed", "TrainingError: loss became nan")
    assert ok["finished_at"] >= ok["created_at"]


def test_metrics_round_trip_with_stage_step_and_system(tmp_path: pathlib.Path, registry: Registry) -> None:
    registry.create_run(_run(tmp_path, "r"), "r", "tiny", {})

    registry.log_metrics("r", "train", {"loss": 2.5, "learning_rate": 1e-4}, step=5)
    registry.log_metrics("r", "train", {"loss": 2}, step=10)
    registry.log_metrics("r", "eval", {"accuracy": 0.5, "macro_f1": 0.4}, system="fine_tuned")
    registry.log_metrics("r", "eval", {})

    train = registry.get_metrics("r", "train")
    assert [(m["name"], m["value"], m["step"], m["system"]) for m in train] == [
        ("loss", 2.5, 5, None),
        ("learning_rate", 1e-4, 5, None),
        ("loss", 2.0, 10, None),
    ]
    assert all(isinstance(m["value"], float) for m in train)
    evaluation = registry.get_metrics("r", "eval")
    assert {(m["name"], m["value"], m["system"]) for m in evaluation} == {
        ("accuracy", 0.5, "fine_tuned"),
        ("macro_f1", 0.4, "fine_tuned"),
    }
    assert len(registry.get_metrics("r")) == 5


def test_artifacts_round_trip(tmp_path: pathlib.Path, registry: Registry) -> None:
    run = _run(tmp_path, "r")
    registry.create_run(run, "r", "tiny", {})

    registry.add_artifact("r", "adapter", run.train / "adapter")
    registry.add_artifact("r", "report", run.eval / "report.html")

    artifacts = registry.get_artifacts("r")
    assert [(a["kind"], a["path"]) for a in artifacts] == [
        ("adapter", str(run.train / "adapter")),
        ("report", str(run.eval / "report.html")),
    ]


def test_list_runs_in_creation_order_and_persisted(tmp_path: pathlib.Path, registry: Registry) -> None:
    for run_id in ("first", "second", "third"):
        registry.create_run(_run(tmp_path, run_id), run_id, "tiny", {})
    registry.finish_run("second", "completed")

    reopened = Registry(str(registry.engine.url))

    assert [r["id"] for r in reopened.list_runs()] == ["first", "second", "third"]
    assert reopened.get_run("second")["status"] == "completed"


def test_metrics_and_artifacts_stay_with_their_run(tmp_path: pathlib.Path, registry: Registry) -> None:
    for run_id in ("a", "b"):
        registry.create_run(_run(tmp_path, run_id), run_id, "tiny", {})
    registry.log_metrics("a", "train", {"loss": 1.0}, step=1)
    registry.add_artifact("a", "audit", tmp_path / "audit.json")

    assert registry.get_metrics("b") == []
    assert registry.get_artifacts("b") == []


def test_unknown_run_id_raises_run_not_found(registry: Registry) -> None:
    with pytest.raises(RunNotFoundError) as info:
        registry.get_run("no-such-run")

    assert "no-such-run" in str(info.value)


def test_duplicate_run_id_is_refused(tmp_path: pathlib.Path, registry: Registry) -> None:
    run = _run(tmp_path, "same")
    registry.create_run(run, "same", "tiny", {})

    with pytest.raises(Exception):  # noqa: B017 - the database's integrity error
        registry.create_run(run, "same", "tiny", {})

    assert len(registry.list_runs()) == 1


def test_new_run_ids_are_unique_and_named() -> None:
    ids = {new_run_id("demo") for _ in range(20)}

    assert len(ids) == 20
    assert all(re.fullmatch(r"demo-\d{8}-\d{6}-[0-9a-f]{4}", i) for i in ids)


def test_run_dir_layout(tmp_path: pathlib.Path) -> None:
    run = RunDir.create(tmp_path / "runs", "r1")

    assert run.id == "r1"
    assert all((run.root / sub).is_dir() for sub in RUN_SUBDIRS)
    assert (run.data, run.train, run.eval) == (run.root / "data", run.root / "train", run.root / "eval")
    assert run.config == run.root / "config.resolved.yaml"
    assert run.model_card == run.root / "model_card.md"
    with pytest.raises(FileExistsError):
        RunDir.create(tmp_path / "runs", "r1")


def test_write_atomic_leaves_no_temporary_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old", encoding="utf-8")

    write_atomic(path, "new ✓")

    assert path.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_run_directory_appears_whole_or_not_at_all(tmp_path: pathlib.Path) -> None:
    def fill(staging: RunDir) -> str:
        assert staging.root.name == ".r1.partial" and not (tmp_path / "r1").exists()
        (staging.data / "train.jsonl").write_text("{}\n", encoding="utf-8")
        return "filled"

    def interrupted(staging: RunDir) -> None:
        (staging.data / "train.jsonl").write_text("{}\n", encoding="utf-8")
        raise KeyboardInterrupt

    run_dir, built = build_run_dir(tmp_path, "r1", fill)
    with pytest.raises(KeyboardInterrupt):
        build_run_dir(tmp_path, "r2", interrupted)

    assert (run_dir.root, built) == (tmp_path / "r1", "filled")
    assert (run_dir.data / "train.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]
