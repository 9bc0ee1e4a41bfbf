"""The fine-tuning API's stores: uploaded files (checked, kept atomically, per key) and jobs (a run config each,
status moves, events, the job -> run -> model id mapping)."""

from __future__ import annotations

import json

import pytest
from conftest import chat_row

from specialize.config import load_config
from specialize.errors import ConfigError, DataError, NotFoundError
from specialize.runs import Registry
from specialize.serve.api_keys import EVERY_KEY
from specialize.serve.fine_tuning import FineTuningJobs, UploadedFiles
from specialize.serve.fine_tuning.jobs import Hyperparameters, fine_tuned_model_id


def jsonl(rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'registry.db'}")


def test_an_upload_is_checked_and_kept_for_its_key_only(registry, tmp_path):
    files = UploadedFiles(registry, tmp_path / "files")
    content = jsonl([chat_row("hi", "hello"), chat_row("bye", "goodbye")])
    stored = files.add("key_a", "chat.jsonl", "fine-tune", content)
    assert stored.path.read_bytes() == content and stored.bytes == len(content)
    assert [p.name for p in (tmp_path / "files").iterdir()] == [stored.path.name]  # no staging file left
    assert files.get("key_a", stored.id) == stored
    with pytest.raises(NotFoundError):
        files.get("key_b", stored.id)
    with pytest.raises(NotFoundError):
        files.delete("key_b", stored.id)
    assert files.get(EVERY_KEY, stored.id) == stored  # an admin's requests see every key's files
    second = files.add("key_a", "more.jsonl", "fine-tune", content)
    assert [f.id for f in files.page("key_a", None, 10, newest_first=False)] == [stored.id, second.id]
    assert files.page("key_b", None, 10, newest_first=True) == []
    files.delete("key_a", stored.id)
    assert not stored.path.exists() and [f.id for f in files.page("key_a", None, 10, True)] == [second.id]


def test_a_bad_upload_names_every_bad_line_and_leaves_nothing(registry, tmp_path):
    files = UploadedFiles(registry, tmp_path / "files")
    bad = jsonl([chat_row("hi", "hello"), "{not json", {"messages": [{"role": "user", "content": "?"}]}])
    with pytest.raises(DataError) as err:
        files.add("key_a", "bad.jsonl", "fine-tune", bad)
    assert [p.split(":")[0] for p in err.value.problems] == ["line 2", "line 3"]
    with pytest.raises(DataError, match="empty"):
        files.add("key_a", "empty.jsonl", "fine-tune", b"")
    with pytest.raises(DataError, match="purpose"):
        files.add("key_a", "chat.jsonl", "assistants", jsonl([chat_row("hi", "hello")]))
    assert list((tmp_path / "files").iterdir()) == [] and files.page("key_a", None, 10, True) == []


def new_job(jobs, tmp_path, key="key_a", **hp):
    train = tmp_path / "train.jsonl"
    train.write_bytes(jsonl([chat_row("hi", "hello")]))
    return jobs.create(key, "tiny", train, None, ("file-1", None), Hyperparameters(**hp), "sfx", None, None)


def test_a_job_is_a_run_config_the_cli_runs(registry, tmp_path):
    jobs = FineTuningJobs(registry, tmp_path / "runs")
    job = new_job(jobs, tmp_path, n_epochs=2, learning_rate_multiplier=0.5)
    config = load_config(job.config_path)  # what the job's child runs: `specialize run <job>.yaml`
    assert (
        config.name == job.id
        and config.base_model == "tiny"
        and config.registry_url == str(registry.engine.url)
    )
    assert config.train.epochs == 2 and config.train.learning_rate == pytest.approx(1e-4)
    assert job.hyperparameters == {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5}
    assert job.status == "queued" and job.fine_tuned_model is None and job.run_id is None
    assert fine_tuned_model_id(job) == f"ft:tiny:sfx:{job.id.removeprefix('ftjob-')}"
    with pytest.raises(ConfigError, match="invalid run config"):
        new_job(jobs, tmp_path, batch_size=0)


def test_status_moves_queue_order_and_key_scoping(registry, tmp_path):
    jobs = FineTuningJobs(registry, tmp_path / "runs")
    first, second = new_job(jobs, tmp_path), new_job(jobs, tmp_path)
    other = new_job(jobs, tmp_path, key="key_b")
    assert jobs.count_active("key_a") == 2 and jobs.count_active("key_b") == 1
    assert jobs.next_to_run().id == first.id
    assert jobs.set_status(second.id, "running")
    assert jobs.next_to_run().id == second.id  # a job the server was running goes first
    assert jobs.using_file("file-1") is not None and jobs.using_file("file-2") is None
    assert jobs.set_status(second.id, "cancelled") and not jobs.set_status(second.id, "running")
    assert jobs.get("key_a", second.id).finished_at is not None
    with pytest.raises(NotFoundError):
        jobs.get("key_a", other.id)
    assert jobs.get(EVERY_KEY, other.id) == other  # an admin's requests see every key's jobs
    assert len(jobs.page(EVERY_KEY, None, 10)) == 3
    assert [j.id for j in jobs.page("key_a", None, 10)] == [second.id, first.id]  # newest first
    assert [j.id for j in jobs.page("key_a", second.id, 10)] == [first.id]


def test_events_runs_and_fine_tuned_models(registry, tmp_path):
    from specialize.runs import RunDir

    jobs = FineTuningJobs(registry, tmp_path / "runs")
    job = new_job(jobs, tmp_path)
    events = jobs.events_of(job)
    assert events and events[0].message.startswith(f"Created fine-tuning job {job.id}")
    assert jobs.run_of(job.id) is None
    run = RunDir.create(tmp_path / "runs", f"{job.id}-20260101-000000-abcd")
    registry.create_run(run, job.id, "tiny", {})
    registry.log_metrics(run.id, "train", {"loss": 2.0, "learning_rate": 1e-4}, step=1)
    registry.log_metrics(run.id, "train", {"loss": 1.5}, step=2)
    assert jobs.run_of(job.id) == run.id
    jobs.add_event(job.id, "Files validated")
    events = jobs.events_of(jobs.get("key_a", job.id))
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data for e in metrics] == [
        {"step": 2, "train_loss": 1.5},
        {"step": 1, "train_loss": 2.0, "learning_rate": 1e-4},
    ]
    assert [e.message for e in events if e.type == "message"][0] == "Files validated"  # newest first
    assert jobs.fine_tuned_models() == {}
    jobs.set_status(job.id, "running", run_id=run.id)
    assert jobs.fine_tuned_models() == {run.id: (None, "key_a")}  # its key's, not served as ft: yet
    jobs.set_status(job.id, "succeeded", fine_tuned_model="ft:tiny:sfx:1", run_id=run.id)
    assert jobs.fine_tuned_models() == {run.id: ("ft:tiny:sfx:1", "key_a")}


def test_a_run_config_that_recorded_its_job_still_loads(tmp_path):
    """Runs of the server's jobs once recorded the job in their config (`fine_tuning_job`); the job store holds
    it now, and those runs stay loadable (servable, evaluable)."""
    import yaml

    from specialize.config import load_resolved, save_resolved

    path = tmp_path / "config.resolved.yaml"
    save_resolved(load_config(None, ['data.train="x.jsonl"', "name=ftjob-1"]), path)
    doc = yaml.safe_load(path.read_text())
    doc["fine_tuning_job"] = {"id": "ftjob-1", "fine_tuned_model": "ft:tiny::1"}
    path.write_text(yaml.safe_dump(doc))
    assert load_resolved(path).name == "ftjob-1"
