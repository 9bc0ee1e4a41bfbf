"""`specialize run CONFIG` end to end on the tiny model: every stage, every artifact, the registry."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pathlib
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from conftest import CompletedRun, only_run_dir

from specialize.cli.main import main
from specialize.config import EvalConfig, RunConfig, load_config
from specialize.errors import ConfigError
from specialize.runs import RunDir

SYSTEMS = ("base_zero_shot", "base_few_shot", "base_rag", "fine_tuned", "fine_tuned_rag")
SYSTEM_ROWS = ("base, zero-shot", "base, few-shot", "base, RAG", "fine-tuned", "fine-tuned, RAG")
ARTIFACT_KINDS = {"train_split", "validation_split", "rejects", "audit", "adapter", "report", "model_card"}


def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _digest(folder: pathlib.Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


@pytest.fixture
def completed_run(run_config: pathlib.Path, tiny_model_dir: pathlib.Path, capsys) -> CompletedRun:
    base_files = _digest(tiny_model_dir)

    code = main(["--quiet", "run", str(run_config)])

    out, err = capsys.readouterr()
    assert code == 0, err
    assert _digest(tiny_model_dir) == base_files, "the run changed the base model's files"
    config = load_config(run_config)
    return CompletedRun(code, out, err, config, only_run_dir(config.runs_dir))


def test_run_exits_zero_and_prints_the_comparison(completed_run: CompletedRun) -> None:
    out = completed_run.out

    assert completed_run.code == 0, completed_run.err
    assert f"run {completed_run.run_dir.id}: 8 validation examples, classification" in out
    table = out.splitlines()
    header = next(line for line in table if line.startswith("system"))
    assert "accuracy" in header and "macro_f1" in header and "micro_f1" in header and "95% CI" in header
    assert "scoring" in header and "labels averaged" in header
    for row_name in SYSTEM_ROWS:
        pattern = (
            re.escape(row_name)
            + r"\s+(raw|length|calibrated|pmi)(\s+\d\.\d{3}){4}\s+([1-3])\s+\d\.\d{3}\s+(\d\.\d{3})-(\d\.\d{3})\s*"
        )
        (row,) = [line for line in table if re.fullmatch(pattern, line)]
        values = row[len(row_name) :].replace("-", " ").split()[1:]
        assert all(0 <= float(v) <= 1 for v in values if "." in v)
        assert float(values[-2]) <= float(values[-1]), "an interval runs from low to high"
    assert re.search(r"fine-tuned vs the best alternative, base, .*paired bootstrap p=\d\.\d{3}", out)
    assert re.search(r"(no sign of overfitting|may be overfitting): validation loss \d", out)
    assert str(completed_run.run_dir.eval / "report.html") in out
    assert str(completed_run.run_dir.model_card) in out
    assert "Traceback" not in completed_run.err


def test_run_directory_holds_every_artifact(completed_run: CompletedRun, chat_dataset) -> None:
    run = completed_run.run_dir
    assert completed_run.code == 0

    for path in (
        run.config,
        run.data / "train.jsonl",
        run.data / "validation.jsonl",
        run.data / "rejects.jsonl",
        run.data / "audit.json",
        run.train / "adapter" / "adapter_config.json",
        run.train / "metrics.jsonl",
        run.eval / "report.json",
        run.eval / "report.html",
        run.model_card,
    ):
        assert path.is_file(), path
    assert [p.name for p in run.root.parent.iterdir() if p.name.startswith(".")] == []
    assert not list(run.root.rglob("*.tmp")) and not list(run.root.rglob("*.partial"))


def test_resolved_config_has_every_value_and_provenance(completed_run: CompletedRun) -> None:
    doc = yaml.safe_load(completed_run.run_dir.config.read_text(encoding="utf-8"))

    assert doc["base_model"] == completed_run.config.base_model
    assert doc["train"]["max_steps"] == 3
    assert doc["train"]["lora"]["rank"] == completed_run.config.train.lora.rank
    assert doc["eval"]["systems"] == list(SYSTEMS)
    assert pathlib.Path(doc["data"]["train"]).is_absolute()
    assert "packages" in doc["_provenance"]


def test_prepared_data_keeps_or_rejects_every_row(completed_run: CompletedRun, chat_dataset) -> None:
    data = completed_run.run_dir.data
    train, validation = _read_jsonl(data / "train.jsonl"), _read_jsonl(data / "validation.jsonl")
    rejects = _read_jsonl(data / "rejects.jsonl")

    assert len(train) + len(validation) + len(rejects) == chat_dataset.n_train + chat_dataset.n_validation
    assert (len(train), len(validation)) == (chat_dataset.n_train, chat_dataset.n_validation)
    audit = json.loads((data / "audit.json").read_text(encoding="utf-8"))
    assert audit["counts"] == {"train": len(train), "validation": len(validation), "rejected": len(rejects)}
    assert set(audit["labels"]) == set(chat_dataset.labels)


def test_training_metrics_are_finite(completed_run: CompletedRun) -> None:
    rows = _read_jsonl(completed_run.run_dir.train / "metrics.jsonl")

    assert rows, "no training metrics logged"
    assert rows[-1]["step"] == 3
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    assert all(r["tokens"] > 0 and r["tokens_per_second"] > 0 for r in rows)


def test_report_compares_every_system(completed_run: CompletedRun, chat_dataset) -> None:
    report = json.loads((completed_run.run_dir.eval / "report.json").read_text(encoding="utf-8"))

    assert report["task"] == "classification"
    assert report["n_examples"] == 8
    assert report["labels"] == sorted(chat_dataset.labels)
    assert list(report["systems"]) == list(SYSTEMS)
    for metrics in report["systems"].values():
        assert 0 <= metrics["accuracy"] <= 1
        assert 0 <= metrics["macro_f1"] <= 1
        assert len(metrics["predictions"]) == 8
        assert set(metrics["predictions"]) <= set(chat_dataset.labels)
        assert sum(map(sum, metrics["confusion_matrix"])) == 8
    html = (completed_run.run_dir.eval / "report.html").read_text(encoding="utf-8")
    assert "<img" in html
    assert "fine-tuned" in html
    assert "macro_f1 of every system, with 95% intervals" in html
    assert report["headline"] == "macro_f1"
    assert report["significance"]["paired_test"]["system"] == "fine_tuned"
    assert report["significance"]["paired_test"]["against"] in SYSTEMS[:3]
    assert isinstance(report["overfitting"]["flagged"], bool)


def test_model_card_describes_the_run(completed_run: CompletedRun) -> None:
    card = completed_run.run_dir.model_card.read_text(encoding="utf-8")

    assert card.startswith(f"# {completed_run.run_dir.id}")
    assert completed_run.config.base_model in card
    for heading in ("## Data", "## Training", "## Evaluation", "## Lineage"):
        assert heading in card
    for row_name in SYSTEM_ROWS:
        assert f"| {row_name} |" in card
    assert "overfitting" in card
    train_sha = hashlib.sha256((completed_run.run_dir.data / "train.jsonl").read_bytes()).hexdigest()
    assert train_sha in card


def test_registry_records_the_completed_run(completed_run: CompletedRun) -> None:
    registry, run = completed_run.registry, completed_run.run_dir

    (row,) = registry.list_runs()
    assert row["id"] == run.id
    assert row["status"] == "completed"
    assert row["error"] is None and row["finished_at"] is not None
    assert pathlib.Path(row["run_dir"]) == run.root.resolve()
    assert row["base_model"] == completed_run.config.base_model
    assert json.loads(row["config"])["train"]["max_steps"] == 3

    train = registry.get_metrics(run.id, "train")
    losses = [m for m in train if m["name"] == "loss"]
    logged = _read_jsonl(run.train / "metrics.jsonl")
    assert [(m["step"], m["value"]) for m in losses] == [
        (r["step"], pytest.approx(r["loss"])) for r in logged
    ]
    assert all(isinstance(m["step"], int) for m in losses)
    assert any(m["name"] == "validation_loss" and math.isfinite(m["value"]) for m in train)

    report = json.loads((run.eval / "report.json").read_text(encoding="utf-8"))
    evaluation = registry.get_metrics(run.id, "eval")
    for system in SYSTEMS:
        values = {m["name"]: m["value"] for m in evaluation if m["system"] == system}
        assert values["accuracy"] == pytest.approx(report["systems"][system]["accuracy"])
        assert values["macro_f1"] == pytest.approx(report["systems"][system]["macro_f1"])

    data = {m["name"]: m["value"] for m in registry.get_metrics(run.id, "data")}
    assert (
        data["train_examples"] == 48 and data["validation_examples"] == 12 and data["rejected_examples"] == 0
    )

    artifacts = registry.get_artifacts(run.id)
    assert {a["kind"] for a in artifacts} == ARTIFACT_KINDS
    for artifact in artifacts:
        path = pathlib.Path(artifact["path"])
        assert path.exists(), artifact
        assert path.resolve().is_relative_to(run.root.resolve()), artifact


def test_only_adapter_weights_are_trained(completed_run: CompletedRun, tiny_model_dir: pathlib.Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from specialize.models import load_model

    adapter = completed_run.run_dir.train / "adapter"
    saved = load_file(adapter / "adapter_model.safetensors")
    assert saved and all("lora_" in name for name in saved)
    assert any(t.abs().sum() > 0 for name, t in saved.items() if "lora_B" in name), "LoRA B never left zero"

    base, _ = load_model(tiny_model_dir)
    reference = {name: p.detach().clone() for name, p in base.named_parameters()}
    tuned = PeftModel.from_pretrained(load_model(tiny_model_dir)[0], adapter)
    compared = 0
    for name, param in tuned.named_parameters():
        if "lora_" in name:
            continue
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(param, reference[key]), name
        compared += 1
    assert compared == len(reference)


def test_set_overrides_reach_the_run(run_config: pathlib.Path, capsys) -> None:
    code = main(
        [
            "--quiet",
            "run",
            str(run_config),
            "--set",
            "train.max_steps=2",
            "--set",
            "train.log_every=1",
            "--set",
            "eval.systems=[fine_tuned]",
            "--set",
            "name=override",
        ]
    )

    out = capsys.readouterr().out
    config = load_config(run_config)
    run = only_run_dir(config.runs_dir)
    assert code == 0
    assert run.id.startswith("override-")
    assert [r["step"] for r in _read_jsonl(run.train / "metrics.jsonl")] == [1, 2]
    report = json.loads((run.eval / "report.json").read_text(encoding="utf-8"))
    assert list(report["systems"]) == ["fine_tuned"]
    assert "fine-tuned" in out and "base, zero-shot" not in out


def test_the_command_exits_with_a_one_line_error(config_factory, tmp_path: pathlib.Path) -> None:
    config = config_factory(train={"learning_rte": 1e-4})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    done = subprocess.run(
        [sys.executable, "-m", "specialize", "run", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )

    assert done.returncode == ConfigError.exit_code
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert "train.learning_rte" in lines[0]
    assert done.stdout == ""
    assert not (tmp_path / "runs").exists()


# A longer run on a task a LoRA adapter on the tiny model can learn: one label in nine of ten training rows.

ONE_TOKEN_LABELS = ("a", "and", "is")  # each one token of the tiny tokenizer, so label scores are comparable


@dataclass(frozen=True)
class LearntRun:
    code: int
    config: RunConfig
    run_dir: RunDir
    target: str
    base_predictions: list[str]


@pytest.fixture(scope="module")
def learnt_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path) -> LearntRun:
    from specialize.data import render_prompt
    from specialize.evaluate import evaluate
    from specialize.evaluate.scoring import SharedPrefix, label_token_ids, score_labels
    from specialize.models import load_model

    root = tmp_path_factory.mktemp("learnt")
    base, tokenizer = load_model(tiny_model_dir)
    ids = label_token_ids(tokenizer, list(ONE_TOKEN_LABELS))
    assert all(len(i) == 2 for i in ids), "the labels are no longer single tokens of the tiny tokenizer"
    questions = [f"note {i}" for i in range(9)]
    wins: Counter[str] = Counter()
    prompts = [
        tokenizer(render_prompt(tokenizer, [{"role": "user", "content": q}]), add_special_tokens=False)[
            "input_ids"
        ]
        for q in questions
    ]
    prefix = SharedPrefix(base, prompts)
    for scores in score_labels(base, prefix, prompts, ids, tokenizer.pad_token_id):
        wins[ONE_TOKEN_LABELS[max(range(len(ids)), key=scores.__getitem__)]] += 1
    # Teach the label the base model likes least, so the fine-tuned model answers differently from it.
    target = min(ONE_TOKEN_LABELS, key=lambda label: wins[label])
    others = [label for label in ONE_TOKEN_LABELS if label != target]

    def rows(pairs: list[tuple[str, str]]) -> str:
        return "".join(
            json.dumps(
                {
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                    "label": a,
                }
            )
            + "\n"
            for q, a in pairs
        )

    train = [(f"item {i}", target if i >= 4 else others[i % 2]) for i in range(40)]
    validation = [(q, ONE_TOKEN_LABELS[i % 3]) for i, q in enumerate(questions)]
    (root / "train.jsonl").write_text(rows(train), encoding="utf-8")
    (root / "validation.jsonl").write_text(rows(validation), encoding="utf-8")
    config_path = root / "learn.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "name": "learn",
                "base_model": str(tiny_model_dir),
                "runs_dir": str(root / "runs"),
                "data": {"train": "train.jsonl", "validation": "validation.jsonl"},
                "train": {"max_steps": 20, "batch_size": 4, "learning_rate": 1e-2, "log_every": 1},
                "eval": {"max_examples": 8, "systems": ["base_zero_shot", "fine_tuned"]},
            }
        ),
        encoding="utf-8",
    )

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["run", str(config_path)])  # with progress bars, unlike the other runs
    assert code == 0, err.getvalue()

    config = load_config(config_path)
    run = only_run_dir(config.runs_dir)
    fresh = evaluate(
        EvalConfig(systems=["base_zero_shot"], max_examples=8),
        tiny_model_dir,
        None,
        run.data / "train.jsonl",
        run.data / "validation.jsonl",
        root / "base-eval",
        sorted(ONE_TOKEN_LABELS),
        config.seed,
        progress=False,
    )
    return LearntRun(code, config, run, target, fresh.metrics["base_zero_shot"]["predictions"])


def test_longer_training_lowers_the_loss(learnt_run: LearntRun) -> None:
    assert learnt_run.code == 0
    losses = [r["loss"] for r in _read_jsonl(learnt_run.run_dir.train / "metrics.jsonl")]

    assert len(losses) == 20
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[0] > losses[-1]
    assert sum(losses[:3]) / 3 > sum(losses[-3:]) / 3 + 0.05


def test_base_rows_score_the_base_model_without_the_adapter(learnt_run: LearntRun) -> None:
    assert learnt_run.code == 0
    report = json.loads((learnt_run.run_dir.eval / "report.json").read_text(encoding="utf-8"))
    fine_tuned = report["systems"]["fine_tuned"]["predictions"]
    assert fine_tuned != learnt_run.base_predictions, "precondition: training did not change any answer"

    assert report["systems"]["base_zero_shot"]["predictions"] == learnt_run.base_predictions
