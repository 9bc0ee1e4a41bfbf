"""`specialize monitor` on traffic served by the real server (in this process): a window drawn like the training
data is not flagged; a window whose prompts drifted to other topics, with corrections on its answers, is, and the
CLI exits 3 for cron. The same feedback then becomes the next dataset's rows."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
import yaml
from conftest import classification_rows, write_jsonl

from specialize.cli.main import main
from specialize.config import load_resolved
from specialize.models.engine import load_engine
from specialize.monitor import build_next_data, monitor_model
from specialize.monitor.request_log import RequestLog
from specialize.runs import Registry, RunDir, now
from specialize.serve.api_keys import ApiKeys
from specialize.serve.app import create_app
from specialize.serve.gate import Gate, Limits
from specialize.serve.metrics import ServerMetrics
from specialize.serve.served_models import ServedModels
from specialize.serve.state import Server

OTHER = [
    "write a poem about the sea at night",
    "what is the capital of australia",
    "translate good morning into italian",
    "explain photosynthesis to a child",
    "suggest a recipe with lentils and rice",
    "who painted the starry night",
]
CONTROL = [r["messages"][0]["content"] for r in classification_rows(60, start=2000)]
DRIFTED = [f"Label this message: {OTHER[i % len(OTHER)]} {i}" for i in range(60)]


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path
) -> Iterator[dict[str, Any]]:
    """A finished LoRA run `tickets@production`, and the server's app over its registry."""
    root = tmp_path_factory.mktemp("monitoring")
    write_jsonl(root / "data" / "train.jsonl", classification_rows(48))
    write_jsonl(root / "data" / "validation.jsonl", classification_rows(12, start=1000))
    config = {
        "name": "tickets",
        "base_model": str(tiny_model_dir),
        "runs_dir": str(root / "runs"),
        "data": {"train": "data/train.jsonl", "validation": "data/validation.jsonl"},
        "train": {"max_steps": 4, "batch_size": 4},
        "eval": {"max_examples": 3, "systems": ["fine_tuned"]},
        "monitor": {"drift": {"min_requests": 40}, "quality": {"min_feedback": 10}},
    }
    (root / "tickets.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--quiet", "run", str(root / "tickets.yaml")]) == 0
    url = f"sqlite:///{root / 'runs' / 'registry.db'}"
    registry = Registry(url)
    (run,) = registry.list_runs()
    registry.set_alias(run["id"], "production")
    _, secret = ApiKeys(registry).create("tests")
    engine = load_engine(tiny_model_dir, max_batch=16, max_adapters=2)
    models = ServedModels(str(tiny_model_dir), tiny_model_dir, registry)
    gate = Gate(
        RequestLog(registry), ApiKeys(registry), ServerMetrics(engine, models.known), Limits(max_tokens=8)
    )
    app = create_app(Server(engine, models, gate))
    engine.start()
    yield {"app": app, "key": secret, "registry": registry, "url": url, "run": run, "root": root}
    engine.stop()


async def send(served: dict[str, Any], prompts: list[str], feedback: dict[int, dict[str, Any]]) -> list[str]:
    """Ask `tickets@production` each prompt (16 at a time), then send `feedback[i]` on the i-th answer."""
    transport = httpx.ASGITransport(app=served["app"])
    headers = {"Authorization": f"Bearer {served['key']}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as client:

        async def ask(prompt: str) -> str:
            body = {"model": "tickets@production", "messages": [{"role": "user", "content": prompt}]}
            reply = await client.post(
                "/v1/chat/completions", json={**body, "max_tokens": 4, "temperature": 0}
            )
            assert reply.status_code == 200, reply.text
            return str(reply.json()["id"])

        ids: list[str] = []
        for start in range(0, len(prompts), 16):
            ids += await asyncio.gather(*(ask(p) for p in prompts[start : start + 16]))
        for i, fb in feedback.items():
            reply = await client.post("/v1/feedback", json={"request_id": ids[i], **fb})
            assert reply.status_code == 200, reply.text
    served["app"].state.gate.flush()
    return ids


@pytest.fixture(scope="module")
def windows(served: dict[str, Any]) -> dict[str, Any]:
    """A control window (thumbs up on 15 answers), then a drifted one (12 corrections naming a label, 3 not)."""
    start = now()
    asyncio.run(send(served, CONTROL, {i: {"rating": 1} for i in range(15)}))
    middle = now()
    corrections = {i: {"correction": "spam", "rating": -1} for i in range(12)}
    corrections.update({i: {"correction": "no idea, sorry"} for i in range(12, 15)})
    asyncio.run(send(served, DRIFTED, corrections))
    return {"start": start, "middle": middle}


def test_an_undrifted_window_is_not_flagged(served, windows, tmp_path):
    config = load_resolved(pathlib.Path(served["run"]["run_dir"]) / "config.resolved.yaml").monitor
    report = monitor_model(
        served["registry"],
        "tickets@production",
        config,
        windows["start"],
        windows["middle"],
        out_dir=tmp_path,
    )
    assert not report.flagged, report.reasons
    (usage,) = report.doc["models"]
    assert usage["model"] == served["run"]["id"] and usage["addressed_as"] == ["tickets@production"]
    assert (
        usage["requests"] == usage["answered"] == 60
        and usage["latency_ms"]["p95"] >= usage["latency_ms"]["p50"]
    )
    assert usage["ratings"] == {"count": 15, "mean": 1.0, "scale": "-1/1 thumbs"} and usage["judged_bad"] == 0
    tests = {t["name"]: t for t in report.doc["drift"]["tests"]}
    assert set(tests) == {"token_divergence", "length_shift", "far_share"} and not any(
        t["flagged"] for t in tests.values()
    )
    assert report.doc["drift"]["template"]["prefix_chars"] == len("Label this message: ")
    assert "name a label" in report.doc["drift"]["labels_note"]  # the tiny model answers no label
    assert report.json_path.is_file() and "Nothing crossed a threshold" in report.html_path.read_text()


def test_a_drifted_window_is_flagged_and_the_cli_exits_3(served, windows):
    out = io.StringIO()
    since = windows["middle"].isoformat()
    with contextlib.redirect_stdout(out):
        code = main(
            ["monitor", "tickets@production", "--since", since, "--registry", served["url"], "--json"]
        )
    assert code == 3
    doc = json.loads(out.getvalue())
    flagged = {t["name"] for t in doc["drift"]["tests"] if t["flagged"]}
    assert {"token_divergence", "far_share"} <= flagged
    assert doc["quality"]["judged"] == 15 and doc["quality"]["bad_share"] == 1.0
    assert any(r.startswith("quality:") for r in doc["reasons"])
    farthest = doc["drift"]["tests"][[t["name"] for t in doc["drift"]["tests"]].index("far_share")]
    assert all(any(o in f["prompt"] for o in OTHER) for f in farthest["details"]["farthest"])
    html = pathlib.Path(served["run"]["run_dir"]) / "monitor"
    assert any("Flagged" in p.read_text() for p in html.glob("*/report.html"))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["monitor", "tickets@production", "--since", since, "--registry", served["url"]]) == 3


def test_feedback_becomes_rows_of_the_next_dataset(served, windows):
    run_dir = RunDir(pathlib.Path(served["run"]["run_dir"]))
    config = load_resolved(run_dir.config)
    sft = frozenset({"chat", "preference", "text"})
    made = build_next_data(
        served["registry"], run_dir, config, sft, feedback=True, data_files=[], golden=None
    )
    counts = made.counts
    assert counts["corrections"] == 12 and counts["ratings"] == 15 and counts["skipped_feedback"] == 3
    assert counts["train_added"] + counts["held_out"] == 12 and counts["held_out"] == 4
    rows = [json.loads(line) for line in made.train.read_text().splitlines()]
    added = [r for r in rows if r.get("request_id")]
    assert len(rows) == 48 + 8 and all(
        r["label"] == "spam" and r["messages"][-1]["content"] == "spam" for r in added
    )
    assert all(r["messages"][-2]["content"] in DRIFTED for r in added)
    unused = [json.loads(line) for line in (made.directory / "unused.jsonl").read_text().splitlines()]
    pairs = [u for u in unused if "rejected" in u]
    kto = [u for u in unused if "completion" in u]
    assert len(pairs) == 8 and len(kto) == 15 and all(k["label"] is True for k in kto)
    skipped = [json.loads(line) for line in (made.directory / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 3 and all("names no label" in s["reason"] for s in skipped)
    again = build_next_data(
        served["registry"], run_dir, config, sft, feedback=True, data_files=[], golden=None
    )
    assert again.fingerprint == made.fingerprint
    # a method that does not learn the parent's kind of rows (conversations) is given none of the new ones
    dpo = build_next_data(served["registry"], run_dir, config, frozenset({"preference"}), True, [], None)
    assert dpo.counts["train_added"] == 0 and dpo.counts["unused"] == 8 + 8 + 15
    assert dpo.fingerprint != made.fingerprint


def test_loop_exits_3_while_the_drift_is_not_fixed_and_trains_once(served, windows):
    registry = served["registry"]
    config = str(served["root"] / "tickets.yaml")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["--quiet", "loop", config, "--json"])
    first = json.loads(out.getvalue())
    assert code == 3 and first["exit_code"] == 3 and first["flagged"] and not first["promoted"]
    child = first["retrained"]["child"]
    assert registry.get_run(child)["parent_run"] == served["run"]["id"] and not first["retrained"]["reused"]
    gate = first["retrained"]["gate"]
    assert not gate["passed"] and any("gate.min_new_examples" in r for r in gate["reasons"])
    assert registry.alias_target("tickets", "production") == served["run"]["id"]
    assert registry.alias_target("tickets", "candidate") == child
    runs = len(registry.list_runs())
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["--quiet", "loop", config, "--json"])
    second = json.loads(out.getvalue())
    assert code == 3 and second["retrained"]["reused"] and second["retrained"]["child"] == child
    assert len(registry.list_runs()) == runs
