"""`specialize run` with the preference methods end to end: a reward model's run, GRPO learning from that reward
model, and GRPO with the number verifier on GSM8K-style rows, each evaluated with the reward of every system."""

from __future__ import annotations

import json
import pathlib

import yaml
from conftest import chat_row, write_jsonl

from specialize.cli.main import main
from specialize.evaluate.metrics import generation_metrics, number_matches
from specialize.runs import Registry, RunDir


def pairs(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "prompt": f"Tell me about case {i}, please.",
            "chosen": "Thank you for asking, I am glad to help.",
            "rejected": "No. Go away.",
        }
        for i in range(start, start + n)
    ]


def sums(n: int, start: int = 0) -> list[dict]:
    return [
        chat_row(f"What is {i} plus {i}?", f"{i} + {i} = {2 * i}\n#### {2 * i}")
        for i in range(start, start + n)
    ]


def run(root: pathlib.Path, name: str, **sections) -> RunDir:
    config = {
        "name": name,
        "base_model": sections.pop("base_model"),
        "runs_dir": str(root / "runs"),
        "data": {
            "train": f"{name}-train.jsonl",
            "validation": f"{name}-validation.jsonl",
            "dedupe": {"near": False},
        },
        **sections,
    }
    (root / f"{name}.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--quiet", "run", str(root / f"{name}.yaml")]) == 0
    [row] = [
        r for r in Registry(f"sqlite:///{root / 'runs' / 'registry.db'}").list_runs() if r["name"] == name
    ]
    return RunDir(pathlib.Path(row["run_dir"]))


def report_of(run_dir: RunDir) -> dict:
    return json.loads((run_dir.eval / "report.json").read_text(encoding="utf-8"))


def test_a_reward_model_run_ranks_held_out_pairs_and_grpo_learns_from_it(tmp_path, tiny_model_dir, capsys):
    write_jsonl(tmp_path / "rm-train.jsonl", pairs(32))
    write_jsonl(tmp_path / "rm-validation.jsonl", pairs(8, start=100))
    scorer = run(
        tmp_path,
        "rm",
        base_model=str(tiny_model_dir),
        train={"method": "reward", "max_steps": 16, "batch_size": 4, "learning_rate": 5e-3},
        eval={"systems": ["base_zero_shot", "fine_tuned", "fine_tuned_rag"]},
    )
    report = report_of(scorer)
    # The reward model ranks by its head; fine-tuned with retrieved context has no meaning for it and is skipped.
    assert report["task"] == "preference" and set(report["systems"]) == {"base_zero_shot", "fine_tuned"}
    assert report["systems"]["fine_tuned"]["preference_accuracy"] == 1.0
    assert "preference_accuracy" in capsys.readouterr().out

    write_jsonl(tmp_path / "polite-train.jsonl", pairs(8, start=200))
    write_jsonl(tmp_path / "polite-validation.jsonl", pairs(4, start=300))
    tuned = run(
        tmp_path,
        "polite",
        base_model=str(tiny_model_dir),
        train={"method": "grpo", "max_steps": 2, "batch_size": 2, "onpolicy": {"k": 2, "max_new_tokens": 4}},
        reward={"type": "model", "run": scorer.id},
        eval={"systems": ["base_zero_shot", "fine_tuned"]},
    )
    out = capsys.readouterr().out
    report = report_of(tuned)
    for system in ("base_zero_shot", "fine_tuned"):
        metrics = report["systems"][system]
        assert len(metrics["rewards"]) == 4 and len(metrics["answers"]) == 4
        low, high = metrics["reward_interval"]
        assert low <= metrics["reward"] <= high
    assert (
        "reward" in out.splitlines()[next(i for i, line in enumerate(out.splitlines()) if "system" in line)]
    )
    samples = [json.loads(line) for line in (tuned.train / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 2 * 2 and {"step", "reward", "advantage", "completion", "source"} <= set(
        samples[0]
    )
    registry = Registry(f"sqlite:///{tmp_path / 'runs' / 'registry.db'}")
    assert "samples" in {a["kind"] for a in registry.get_artifacts(tuned.id)}
    card = tuned.model_card.read_text(encoding="utf-8")
    assert "train/samples.jsonl" in card and "reward: model" in card


def test_grpo_with_the_number_verifier_reports_strict_and_lenient_accuracy(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "sums-train.jsonl", sums(8))
    write_jsonl(tmp_path / "sums-validation.jsonl", sums(4, start=50))
    tuned = run(
        tmp_path,
        "sums",
        base_model=str(tiny_model_dir),
        train={"method": "grpo", "max_steps": 2, "batch_size": 2, "onpolicy": {"k": 2, "max_new_tokens": 4}},
        reward={"type": "number", "form": "strict"},
        eval={"systems": ["base_zero_shot", "fine_tuned"]},
    )
    report = report_of(tuned)
    assert report["task"] == "generation" and report["overfitting"] is None  # no loss gap on-policy
    for metrics in report["systems"].values():
        assert {"number_strict", "number_lenient", "reward"} <= set(metrics)
        assert metrics["reward"] == metrics["number_strict"]  # the strict verifier is the strict accuracy


def test_strict_and_lenient_accuracy_tell_format_from_answer():
    gold = ["7 + 5 = 12\n#### 12", "#### 1,000", "#### 3"]
    answers = ["so 12", "#### 1000.0", "#### 4, no 3"]
    assert number_matches(gold, answers, strict=True) == [0.0, 1.0, 0.0]
    assert number_matches(gold, answers, strict=False) == [1.0, 1.0, 1.0]
    metrics = generation_metrics(gold, answers, 1.0, 1)
    assert (metrics["number_strict"], metrics["number_lenient"]) == (1 / 3, 1.0)
