"""OpenAI fine-tuning code (files, jobs, events, cancel) against a live `specialize serve` on 127.0.0.1.

Jobs train the tiny model for a few steps in the server's background worker; the fine-tuning config the server is
started with keeps them short.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import yaml
from conftest import chat_row
from live import free_port, start_server, wait_until

from specialize.cli.main import main
from specialize.runs import Registry
from specialize.serve.api_keys import ApiKeys
from specialize.serve.fine_tuning import FineTuningJobs

FINISHED = {"succeeded", "failed", "cancelled"}
PARITY = [{"role": "user", "content": "Is 12 even? Answer alpha or omega."}]


def parity_rows(n: int) -> list[dict]:
    return [chat_row(f"Is {i} even? Answer alpha or omega.", "omega" if i % 2 else "alpha") for i in range(n)]


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


@dataclass
class Server:
    url: str
    key: str
    registry_url: str
    root: Path
    args: list[str]
    port: int
    process: object

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key or self.key, max_retries=0, timeout=60)

    def restart(self) -> None:
        self.process = start_server(self.args, self.root / "server.log", self.port)


def launch(root: Path, model_dir: Path, train: dict) -> Server:
    registry_url = f"sqlite:///{root / 'runs' / 'registry.db'}"
    _, key = ApiKeys(Registry(registry_url)).create("tests")
    config = root / "fine-tune.yaml"
    doc = {"train": train, "eval": {"systems": ["fine_tuned"], "max_examples": 2}}
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    args = ["--base-model", str(model_dir), "--registry", registry_url, "--fine-tune-config", str(config)]
    port = free_port()
    process = start_server(args + ["--max-tokens", "32"], root / "server.log", port)
    return Server(f"http://127.0.0.1:{port}/v1", key, registry_url, root, args, port, process)


def stop(server: Server) -> None:
    server.process.terminate()  # type: ignore[attr-defined]
    server.process.wait(timeout=30)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    train = {"max_steps": 4, "batch_size": 4, "log_every": 1, "learning_rate": 0.01}
    live = launch(tmp_path_factory.mktemp("fine-tuning"), tiny_model_dir, train)
    yield live
    stop(live)


def wait_for(client: openai.OpenAI, job_id: str, statuses: set[str], timeout: float = 180) -> object:
    def reached() -> object:
        job = client.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in statuses else None

    return wait_until(reached, timeout, f"job {job_id} reaching {statuses}")


@pytest.fixture(scope="module")
def finished_job(server):
    client = server.client()
    upload = client.files.create(file=("parity.jsonl", jsonl(parity_rows(24))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=upload.id,
        suffix="parity",
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4, "n_epochs": 2}}},
    )
    return upload, job, wait_for(client, job.id, FINISHED)


def test_upload_train_and_chat_with_the_fine_tuned_model(server, finished_job, tiny_model_dir):
    client = server.client()
    upload, created, job = finished_job
    assert upload.object == "file" and upload.purpose == "fine-tune" and upload.status == "processed"
    assert client.files.retrieve(upload.id).bytes == len(jsonl(parity_rows(24)))
    assert client.files.content(upload.id).read() == jsonl(parity_rows(24))
    assert created.object == "fine_tuning.job" and created.status == "queued" and created.seed == 3
    assert created.hyperparameters.batch_size == 4 and created.hyperparameters.n_epochs == 2
    assert created.hyperparameters.learning_rate_multiplier == 1  # "auto": the server config's rate
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny-chat:parity:{job.id.removeprefix('ftjob-')}"
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in events]
    assert len(messages) >= 5, (
        messages
    )  # created, validating, validated, model created, completed; and metrics
    assert messages[0] == "The job has successfully completed"  # newest first, as OpenAI lists them
    assert any(m.startswith("New fine-tuned model created: ft:tiny-chat:parity:") for m in messages)
    assert any(m.startswith("Files validated; training run ftjob-") for m in messages)
    losses = [e.data["train_loss"] for e in events if e.type == "metrics"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    page = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(page.data) == 2 and page.has_more
    after = client.fine_tuning.jobs.list_events(job.id, limit=2, after=page.data[-1].id).data
    assert [e.id for e in after] == [e.id for e in events[2:4]]

    [checkpoint] = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoint.step_number == 4 and checkpoint.fine_tuned_model_checkpoint == job.fine_tuned_model
    assert math.isfinite(checkpoint.metrics.train_loss)

    assert job.fine_tuned_model in {m.id for m in client.models.list()}
    reply = client.chat.completions.create(
        model=job.fine_tuned_model, messages=PARITY, max_tokens=8, temperature=0
    )
    assert reply.model == job.fine_tuned_model and isinstance(reply.choices[0].message.content, str)
    config = yaml.safe_load((server.root / "runs" / "fine_tuning" / f"{job.id}.yaml").read_text())
    assert config["name"] == job.id and "fine_tuning_job" not in config  # the job store records the job
    assert config["train"]["batch_size"] == 4 and config["train"]["epochs"] == 2 and config["seed"] == 3
    store = FineTuningJobs(Registry(server.registry_url), Path("unused"))
    run_id = _run_id(Registry(server.registry_url), job.id)
    assert store.run_of(job.id) == run_id and store.fine_tuned_models()[run_id][0] == job.fine_tuned_model


def test_a_malformed_upload_is_refused_with_every_bad_line(server):
    client = server.client()
    no_answer = {"messages": [{"role": "user", "content": "hello?"}]}
    bad = jsonl([chat_row("hi", "hello"), "{not json", no_answer])
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert err.value.code == "invalid_file" and err.value.param == "file"
    message = err.value.message
    assert "2 invalid line(s) in bad.jsonl" in message and "line 2: " in message
    assert "line 3: no assistant turn" in message
    assert "bad.jsonl" not in {f.filename for f in client.files.list()}
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("notes.jsonl", jsonl(parity_rows(2))), purpose="assistants")
    assert err.value.param == "purpose"


def test_jobs_files_and_models_of_one_key_are_invisible_to_another(server, finished_job):
    """Issue 14, defect 6: another key could list and chat with a key's `ft:` models."""
    upload, _, job = finished_job
    registry = Registry(server.registry_url)
    run_id = _run_id(registry, job.id)
    _, secret = ApiKeys(registry).create("someone else")
    other = server.client(secret)
    for call in (
        lambda: other.fine_tuning.jobs.retrieve(job.id),
        lambda: other.fine_tuning.jobs.cancel(job.id),
        lambda: other.fine_tuning.jobs.list_events(job.id),
        lambda: other.files.retrieve(upload.id),
        lambda: other.files.content(upload.id),
        lambda: other.files.delete(upload.id),
        lambda: other.models.retrieve(job.fine_tuned_model),
        lambda: other.models.retrieve(run_id),
        lambda: other.chat.completions.create(model=job.fine_tuned_model, messages=PARITY, max_tokens=2),
        lambda: other.chat.completions.create(model=run_id, messages=PARITY, max_tokens=2),
        lambda: other.completions.create(model=job.fine_tuned_model, prompt="Is 2 even?", max_tokens=2),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.fine_tuning.jobs.list().data == [] and other.files.list().data == []
    assert {m.id for m in other.models.list()}.isdisjoint({job.fine_tuned_model, run_id})
    # the key that made them, and an admin key, see and use them
    assert {job.fine_tuned_model, run_id} <= {m.id for m in server.client().models.list()}
    _, admin_secret = ApiKeys(registry).create("operator", admin=True)
    admin = server.client(admin_secret)
    assert {job.fine_tuned_model, run_id} <= {m.id for m in admin.models.list()}
    assert (
        admin.fine_tuning.jobs.retrieve(job.id).id == job.id
        and admin.files.retrieve(upload.id).id == upload.id
    )
    reply = admin.chat.completions.create(model=job.fine_tuned_model, messages=PARITY, max_tokens=2)
    assert reply.model == job.fine_tuned_model
    with pytest.raises(openai.BadRequestError) as err:
        other.fine_tuning.jobs.create(model="tiny-chat", training_file=upload.id)
    assert err.value.param == "training_file"


def test_refusals_name_the_field(server, finished_job):
    client = server.client()
    upload = finished_job[0]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model="tiny-chat", training_file=upload.id, method={"type": "reinforcement"}
        )
    assert err.value.code == "unsupported_method" and "no reinforcement" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:  # chat rows cannot train a preference method
        client.fine_tuning.jobs.create(model="tiny-chat", training_file=upload.id, method={"type": "dpo"})
    assert err.value.param == "training_file" and "preferred_output" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=upload.id)
    assert err.value.param == "model" and "tiny-chat" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(
            model="tiny-chat", training_file=upload.id, hyperparameters={"n_epochs": 0}
        )
    assert err.value.param == "hyperparameters.n_epochs"


def test_cancel_kills_the_job_and_the_worker_goes_on(server, finished_job):
    client = server.client()
    upload = finished_job[0]
    job = client.fine_tuning.jobs.create(model="tiny-chat", training_file=upload.id)
    wait_for(client, job.id, {"running"})  # its run exists and trains
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)
    assert "Fine-tuning job cancelled" in [
        e.message for e in client.fine_tuning.jobs.list_events(job.id).data
    ]
    listed = client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in listed.data] == [job.id] and listed.has_more
    assert client.fine_tuning.jobs.list(after=job.id).data[0].id == finished_job[2].id
    queued = client.fine_tuning.jobs.create(model="tiny-chat", training_file=upload.id)
    with pytest.raises(openai.ConflictError):  # an unfinished job still needs the file
        client.files.delete(upload.id)
    client.fine_tuning.jobs.cancel(queued.id)
    registry = Registry(server.registry_url)
    # the worker kills the child and marks the job's run cancelled; the queued job never made a run
    wait_until(
        lambda: registry.get_run(_run_id(registry, job.id))["status"] == "cancelled", 30, "run cancelled"
    )
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert [r["name"] for r in registry.list_runs() if r["name"] in (job.id, queued.id)] == [job.id]


def test_parity_of_the_job_run_against_recorded_answers(server, finished_job, tmp_path):
    registry = Registry(server.registry_url)
    job = finished_job[2]
    reference = tmp_path / "recorded.jsonl"
    reference.write_bytes(jsonl(parity_rows(6)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["--quiet", "parity", _run_id(registry, job.id), "--reference", str(reference)]
            + ["--registry", server.registry_url, "--json"]
        )
    assert code == 0
    report = json.loads(out.getvalue())
    assert report["n_examples"] == 6 and report["task"] == "generation"
    assert set(report["metrics"]) == {"exact_match", "token_f1", "rouge_l"}
    assert all(0 <= v <= 1 for v in report["metrics"].values())
    assert "exact_match" in report["held_out"]
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        main(
            [
                "--quiet",
                "parity",
                _run_id(registry, job.id),
                "--reference",
                str(reference),
                "--registry",
                server.registry_url,
            ]
        )
    assert "vs recorded answers" in table.getvalue() and "rouge_l" in table.getvalue()


def _run_id(registry: Registry, job_id: str) -> str:
    return next(r["id"] for r in registry.list_runs() if r["name"] == job_id)


def test_a_job_survives_a_killed_server(tmp_path, tiny_model_dir):
    train = {"max_steps": 300, "batch_size": 2, "log_every": 5, "checkpoints": {"every": 5}}
    server = launch(tmp_path, tiny_model_dir, train)
    try:
        client = server.client()
        upload = client.files.create(file=("parity.jsonl", jsonl(parity_rows(24))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny-chat", training_file=upload.id, suffix="survivor")
        wait_for(client, job.id, {"running"})
        registry = Registry(server.registry_url)
        run_dir = Path(registry.get_run(_run_id(registry, job.id))["run_dir"])
        wait_until(
            lambda: list((run_dir / "train" / "checkpoints").glob("step-*")), 120, "a first checkpoint"
        )
        os.kill(server.process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        server.process.wait()  # type: ignore[attr-defined]
        assert client_status(registry, job.id) == "running"
        server.restart()
        done = wait_for(server.client(), job.id, FINISHED, timeout=300)
        assert done.status == "succeeded", done.error
        messages = [e.message for e in server.client().fine_tuning.jobs.list_events(job.id, limit=500).data]
        assert "The server restarted; the job continues from its last checkpoint" in messages
        log = (tmp_path / "runs" / "fine_tuning" / f"{job.id}.log").read_text()
        assert "resuming from step-" in log
        steps = {
            m["step"] for m in registry.get_metrics(_run_id(registry, job.id), "train") if m["name"] == "loss"
        }
        assert steps == set(range(5, 301, 5))  # every step logged once, none lost or doubled by the restart
        reply = server.client().chat.completions.create(
            model=done.fine_tuned_model, messages=PARITY, max_tokens=4, temperature=0
        )
        assert reply.model == done.fine_tuned_model
    finally:
        stop(server)


def client_status(registry: Registry, job_id: str) -> str:
    return FineTuningJobs(registry, Path("unused")).status_of(job_id)


def preference_rows(n: int) -> list[dict]:
    """OpenAI's DPO format: the polite answer preferred over the rude one."""
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Help me with order {i}, please."}]},
            "preferred_output": [{"role": "assistant", "content": "Of course, I am glad to help."}],
            "non_preferred_output": [{"role": "assistant", "content": "No."}],
        }
        for i in range(n)
    ]


def test_a_dpo_job_on_openai_preference_pairs(server):
    client = server.client()
    upload = client.files.create(file=("prefs.jsonl", jsonl(preference_rows(16))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=upload.id,
        suffix="polite",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "batch_size": 4}}},
    )
    assert job.method.type == "dpo" and job.hyperparameters.beta == 0.5
    done = wait_for(client, job.id, FINISHED)
    assert done.status == "succeeded", done.error
    run = next(r for r in Registry(server.registry_url).list_runs() if r["name"] == job.id)
    assert json.loads(run["config"])["train"]["method"] == "dpo"
    reply = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Help me"}], max_tokens=4
    )
    assert reply.model == done.fine_tuned_model and reply.choices[0].finish_reason in {"stop", "length"}
