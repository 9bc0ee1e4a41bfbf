"""Retraining, the gate, promotion and rollback, on a tiny model that really learns the task.

The runs are full fine-tunes of the tiny model: with its small tied embeddings a LoRA adapter cannot move its
answers far enough to learn labels in a few steps, while every weight can. The parent learns three labels from
three phrasings each. A good child also sees new phrasings of the same labels, which the parent has never seen: it
must be better on held-out ones and no worse on the parent's validation set. A damaged child is retrained on more
rows whose labels are deranged (billing -> shipping -> spam -> billing) than it has correct ones: it answers wrong
labels on the regression set, and the gate must refuse it.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
from typing import Any

import pytest
import yaml
from conftest import LABELS, chat_row, classification_rows, write_jsonl

from specialize.cli.main import main
from specialize.config import load_config
from specialize.errors import PromotionError
from specialize.retraining import loop, promote, retrain, rollback
from specialize.runs import Registry

NEW_PHRASINGS = {
    "billing": [
        "the refund never reached my bank",
        "why is there a fee on my statement",
        "cancel the renewal",
    ],
    "shipping": ["my box is stuck at customs", "the tracking page shows nothing", "it went to the neighbour"],
    "spam": ["claim your bonus crypto today", "hot singles near you", "act now to unlock your reward"],
}
DERANGED = {label: LABELS[(i + 1) % len(LABELS)] for i, label in enumerate(LABELS)}


def new_rows(n: int, start: int) -> list[dict[str, Any]]:
    """`n` messages of the three labels in phrasings the parent never saw."""
    rows = []
    for i in range(start, start + n):
        label = LABELS[i % len(LABELS)]
        text = NEW_PHRASINGS[label][(i // len(LABELS)) % 3]
        rows.append(chat_row(f"Label this message: {text} {i}", label, label))
    return rows


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["--quiet", *args])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("retraining")
    write_jsonl(root / "data" / "train.jsonl", classification_rows(48))
    write_jsonl(root / "data" / "validation.jsonl", classification_rows(30, start=1000))
    write_jsonl(root / "new.jsonl", new_rows(36, 2000))
    write_jsonl(root / "golden.jsonl", classification_rows(90, start=5000))
    damaged = [{**r, "label": DERANGED[r["label"]]} for r in classification_rows(150, start=3000)]
    for row in damaged:
        row["messages"][-1]["content"] = row["label"]
    write_jsonl(root / "deranged.jsonl", damaged)
    config = {
        "name": "tickets",
        "base_model": str(tiny_model_dir),
        "runs_dir": str(root / "runs"),
        "data": {"train": "data/train.jsonl", "validation": "data/validation.jsonl"},
        "train": {"adapter": None, "max_steps": 150, "batch_size": 8, "learning_rate": 0.01},
        "eval": {"systems": ["fine_tuned"]},
        "monitor": {
            "gate": {"margin": 0.1, "alpha": 0.05, "min_new_examples": 8},
            "retrain": {"holdout": 0.4, "min_new_examples": 10, "feedback": False, "golden": "golden.jsonl"},
        },
    }
    path = root / "tickets.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, _ = cli("run", str(path))
    assert code == 0
    registry = Registry(load_config(path).registry_url)
    (run,) = registry.list_runs()
    return {
        "root": root,
        "config": path,
        "registry": registry,
        "id": run["id"],
        "url": load_config(path).registry_url,
    }


@pytest.fixture(scope="module")
def good(parent: dict[str, Any]):
    return retrain(parent["id"], parent["url"], data=[parent["root"] / "new.jsonl"], progress=False)


def test_retrain_builds_a_child_with_its_parent_and_the_new_data(parent, good):
    child = parent["registry"].get_run(good.child)
    assert (
        child["parent_run"] == parent["id"] and child["status"] == "completed" and child["name"] == "tickets"
    )
    assert (good.inputs.counts["held_out"], good.inputs.counts["train_added"]) == (15, 21)  # 5 of each label
    lines = (pathlib.Path(child["run_dir"]) / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["messages"][-2]["content"] for line in lines]
    phrasings = [p for ps in NEW_PHRASINGS.values() for p in ps]
    assert len(texts) == 48 + 21 and sum(any(p in t for p in phrasings) for t in texts) == 21
    held = [json.loads(line)["messages"][-2]["content"] for line in good.inputs.new.read_text().splitlines()]
    assert not set(held) & set(texts)
    card = (pathlib.Path(child["run_dir"]) / "model_card.md").read_text(encoding="utf-8")
    assert f"parent run: {parent['id']}" in card
    assert parent["registry"].alias_target("tickets", "candidate") == good.child


def test_the_gate_promotes_a_better_child(parent, good):
    decision = good.decision
    assert decision.passed, decision.summary()
    assert decision.regression.n == 30 + 90 and decision.new is not None and decision.new.n == 15
    assert decision.new.child > decision.new.parent and decision.new.p_value < 0.05
    assert decision.regression.lower_bound > -0.1
    recorded = json.loads(
        (pathlib.Path(parent["registry"].get_run(good.child)["run_dir"]) / "gate.json").read_text()
    )
    assert recorded["passed"] is True
    gate_metrics = {m["name"]: m["value"] for m in parent["registry"].get_metrics(good.child, "gate")}
    assert gate_metrics["passed"] == 1.0 and gate_metrics["new_p_value"] < 0.05


def test_the_same_inputs_train_no_second_child(parent, good):
    again = retrain(parent["id"], parent["url"], data=[parent["root"] / "new.jsonl"], progress=False)
    assert again.reused and again.child == good.child and again.decision == good.decision
    assert len(parent["registry"].list_runs()) == 2


def test_the_gate_refuses_a_child_trained_on_deranged_labels(parent, good):
    damaged = retrain(parent["id"], parent["url"], data=[parent["root"] / "deranged.jsonl"], progress=False)
    decision = damaged.decision
    assert not decision.passed
    assert decision.regression.child < decision.regression.parent - 0.1  # worse than the gate's margin
    assert not decision.regression.passed and decision.regression.p_value >= 0.05
    assert any("regression set" in reason for reason in decision.reasons)
    with pytest.raises(PromotionError, match="the gate refused") as refused:
        promote(damaged.child, "production", parent["url"])
    assert f"parent {decision.regression.parent:.4f}" in str(refused.value)
    code, _ = cli("promote", damaged.child, "--alias", "production", "--registry", parent["url"])
    assert code == PromotionError.exit_code
    assert parent["registry"].alias_target("tickets", "production") is None


def test_a_child_whose_gate_has_not_decided_is_not_promoted(parent, good):
    gate = pathlib.Path(parent["registry"].get_run(good.child)["run_dir"]) / "gate.json"
    kept = gate.read_text(encoding="utf-8")
    gate.unlink()  # as while the gate still runs, or after it was killed
    try:
        with pytest.raises(PromotionError, match="gate has not decided"):
            promote(good.child, "staging", parent["url"])
        assert parent["registry"].alias_target("tickets", "staging") is None
    finally:
        gate.write_text(kept, encoding="utf-8")


def test_promote_then_rollback_restores_the_parent(parent, good):
    registry, url = parent["registry"], parent["url"]
    assert cli("promote", parent["id"], "--alias", "production", "--registry", url)[0] == 0
    code, out = cli("promote", good.child, "--alias", "production", "--registry", url)
    assert code == 0 and f"{parent['id']} -> {good.child}" in out
    assert registry.alias_target("tickets", "production") == good.child
    code, out = cli("rollback", "production", "--registry", url)
    assert code == 0 and f"tickets@production: {good.child} -> {parent['id']}" in out
    assert registry.alias_target("tickets", "production") == parent["id"]
    code, _ = cli("rollback", "tickets@production", "--registry", url)
    assert code == PromotionError.exit_code  # the parent was the alias's first run
    actions = [(h["action"], h["run_id"]) for h in registry.alias_history_of("tickets", "production")]
    assert actions == [("promote", parent["id"]), ("promote", good.child), ("rollback", parent["id"])]
    code, out = cli("aliases", "--history", "--registry", url)
    assert code == 0 and out.count("tickets@production") == 3
    with pytest.raises(PromotionError):
        rollback("tickets@production", url)


def test_loop_promotes_the_gated_child_once(parent, good):
    registry = parent["registry"]
    config = load_config(parent["config"], [f"monitor.retrain.data=[{parent['root'] / 'new.jsonl'}]"])
    registry.set_alias(parent["id"], "production", note="test: start from the parent")
    first = loop(config, progress=False)
    assert first.retrained is not None and first.retrained.reused and first.retrained.child == good.child
    assert first.promoted and registry.alias_target("tickets", "production") == good.child
    assert first.exit_code == 0
    runs = len(registry.list_runs())
    second = loop(config, progress=False)  # cron again: nothing new since the child
    assert second.retrained is None and not second.promoted and second.exit_code == 0
    assert len(registry.list_runs()) == runs and registry.alias_target("tickets", "production") == good.child


def test_a_second_loop_does_not_train_while_one_holds_the_lock(parent):
    import subprocess
    import sys

    runs_dir = load_config(parent["config"]).runs_dir
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom specialize.retraining import _lock\nwith _lock(__import__('pathlib').Path(sys.argv[1])):"
            "\n    print('held', flush=True)\n    time.sleep(600)",
            str(runs_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        runs = len(parent["registry"].list_runs())
        result = loop(load_config(parent["config"]), progress=False)
        assert result.locked_by == f"pid {holder.pid}" and result.report is None and result.exit_code == 0
        code, out = cli("loop", str(parent["config"]))
        assert code == 0 and "another loop holds the lock" in out
        assert len(parent["registry"].list_runs()) == runs
    finally:
        holder.kill()  # killed, not released: the kernel drops its lock, no stale lock file is left to clear
        holder.wait()
    assert loop(load_config(parent["config"]), progress=False).locked_by is None


def test_a_parent_sampled_per_label_keeps_every_new_example_in_its_child(
    tmp_path: pathlib.Path, tiny_model_dir: pathlib.Path
):
    # The parent's training rows were capped at 4 a label; its child must not cap parent + new rows again, which
    # dropped new examples (found on banking77: 77 of 154 new rows "not sampled" under max_per_label 3).
    write_jsonl(tmp_path / "data" / "train.jsonl", classification_rows(48))
    write_jsonl(tmp_path / "data" / "validation.jsonl", classification_rows(12, start=1000))
    write_jsonl(tmp_path / "new.jsonl", new_rows(36, 2000))
    config = {
        "name": "capped",
        "base_model": str(tiny_model_dir),
        "runs_dir": str(tmp_path / "runs"),
        "data": {"train": "data/train.jsonl", "validation": "data/validation.jsonl", "max_per_label": 4},
        "train": {"adapter": None, "max_steps": 2, "batch_size": 8},
        "eval": {"systems": ["fine_tuned"]},
        "monitor": {"gate": {"min_new_examples": 8}, "retrain": {"feedback": False}},
    }
    path = tmp_path / "capped.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert cli("run", str(path))[0] == 0
    url = load_config(path).registry_url
    (run,) = Registry(url).list_runs()
    result = retrain(run["id"], url, data=[tmp_path / "new.jsonl"], progress=False)
    added = result.inputs.counts["train_added"]
    child_dir = pathlib.Path(Registry(url).get_run(result.child)["run_dir"])
    lines = (child_dir / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert added > 0 and len(lines) == 3 * 4 + added
