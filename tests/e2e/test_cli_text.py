"""Continued pre-training: `specialize run` on plain text learns it, and reports held-out perplexity."""

from __future__ import annotations

import json

import yaml
from conftest import write_jsonl

from specialize.cli.main import main

SENTENCES = [
    "The lessee shall pay the rent on the first day of each month.",
    "The lessor shall keep the premises in good repair at all times.",
    "Either party may end this lease with ninety days written notice.",
    "The deposit is returned within thirty days of the end of the lease.",
]


def documents(n: int, start: int = 0) -> list[dict]:
    return [
        {"text": f"Clause {i}. " + " ".join(SENTENCES[(i + k) % 4] for k in range(3))}
        for i in range(start, start + n)
    ]


def test_continued_pretraining_lowers_held_out_perplexity(tmp_path, tiny_model_dir, capsys):
    write_jsonl(tmp_path / "corpus.jsonl", documents(32))
    write_jsonl(tmp_path / "heldout.jsonl", documents(6, start=500))
    config = {
        "name": "leases",
        "base_model": str(tiny_model_dir),
        "runs_dir": str(tmp_path / "runs"),
        "data": {"train": "corpus.jsonl", "validation": "heldout.jsonl", "dedupe": {"near": False}},
        "train": {"max_steps": 20, "batch_size": 4, "learning_rate": 0.01},
    }
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--quiet", "run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "text" in out and "perplexity" in out
    [run_dir] = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["task"] == "text" and set(report["systems"]) == {"base_zero_shot", "fine_tuned"}
    base, tuned = (report["systems"][s]["perplexity"] for s in ("base_zero_shot", "fine_tuned"))
    assert tuned < 0.9 * base
    low, high = report["significance"]["intervals"]["fine_tuned"]
    assert low <= tuned <= high
