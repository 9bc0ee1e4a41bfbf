"""`specialize parity` on a classification run: label accuracy is scored over the label set, as evaluation does."""

from __future__ import annotations

import json

from conftest import classification_rows, write_jsonl

from specialize.evaluate.parity import compare_parity


def test_parity_of_a_classification_run(finish_run, tmp_path):
    done = finish_run(eval={"systems": ["fine_tuned"], "max_examples": 4})
    rows = classification_rows(6, start=2000)
    rows[0]["messages"][-1]["content"] = "Billing."  # the replaced model's wording, not the label itself
    reference = write_jsonl(tmp_path / "recorded.jsonl", rows)
    report = compare_parity(str(done.run_dir.root), reference, done.config.registry_url)
    assert report.task == "classification" and report.n_examples == 6
    assert set(report.metrics) == {"exact_match", "token_f1", "rouge_l", "label_accuracy"}
    assert "accuracy" in report.held_out and "macro_f1" in report.held_out
    saved = json.loads(report.report_path.read_text())
    assert len(saved["answers"]) == 6 and all(
        a["label"] in ("billing", "shipping", "spam") for a in saved["answers"]
    )
    stage = done.registry.get_metrics(done.run_dir.id, "parity:recorded")
    assert {m["name"] for m in stage} == set(report.metrics)
