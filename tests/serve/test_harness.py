"""lm-evaluation-harness against a live `specialize serve` (issue 14, defect 5): a multiple-choice task, defined
here and read from a local file, runs through the harness' `local-completions` model (log-likelihoods from
`/v1/completions` with `echo` and `logprobs`), and its accuracy equals specialize's own label scoring
(`evaluate/scoring.py`) of the same questions with the same model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from live import live_server  # noqa: F401  (fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer

from specialize.data import render_prompt
from specialize.evaluate.scoring import SharedPrefix, label_token_ids, score_labels

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness (`pip install lm-eval[api]`)")


def questions(live_server, tokenizer) -> tuple[list[dict], list[str]]:
    """The fine-tuned run's validation examples as multiple-choice questions: its prompt, its labels."""
    run = live_server.registry.get_run(live_server.runs["a"])
    lines = (Path(run["run_dir"]) / "data" / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    examples = [json.loads(line) for line in lines if line.strip()]
    labels = sorted({e["label"] for e in examples})
    end = tokenizer.eos_token
    rows = [
        {
            "prompt": render_prompt(tokenizer, e["messages"][:-1]),
            "choices": [label + end for label in labels],  # as specialize scores a label: then end of turn
            "gold": labels.index(e["label"]),
        }
        for e in examples
    ]
    return rows, labels


def harness(live_server, rows: list[dict], root: Path, monkeypatch) -> dict:
    from lm_eval.tasks import TaskManager

    data = root / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = {
        "task": "specialize_labels",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(root / "datasets")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc"}],
    }
    (root / "tasks").mkdir()
    (root / "tasks" / "specialize_labels.yaml").write_text(yaml.safe_dump(task), encoding="utf-8")
    monkeypatch.setenv("OPENAI_API_KEY", live_server.key)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "base_url": f"{live_server.url}/completions",
            "model": live_server.runs["a"],
            "tokenizer": live_server.base,
            "tokenizer_backend": "huggingface",
            "max_length": 1024,
            "batch_size": 4,  # four prompts per request
            "max_retries": 1,
        },
        tasks=["specialize_labels"],
        task_manager=TaskManager(include_path=str(root / "tasks")),
        log_samples=True,
    )


def test_the_harness_accuracy_equals_specialize_label_scoring(live_server, tmp_path, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(live_server.base)
    rows, labels = questions(live_server, tokenizer)
    assert len(rows) >= 4 and len(labels) == 3

    from peft import PeftModel

    run_dir = Path(live_server.registry.get_run(live_server.runs["a"])["run_dir"])
    model = AutoModelForCausalLM.from_pretrained(live_server.base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, run_dir / "train" / "adapter").eval()
    prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    ours = score_labels(
        model,
        SharedPrefix(model, prompts),
        prompts,
        label_token_ids(tokenizer, labels),
        tokenizer.pad_token_id,
    )
    our_accuracy = sum(
        max(range(3), key=s.__getitem__) == r["gold"] for s, r in zip(ours, rows, strict=True)
    ) / len(rows)

    results = harness(live_server, rows, tmp_path, monkeypatch)
    their_accuracy = results["results"]["specialize_labels"]["acc,none"]
    print(
        f"\nharness accuracy {their_accuracy:.3f}, specialize label scoring {our_accuracy:.3f}, {len(rows)} questions"
    )
    assert their_accuracy == pytest.approx(our_accuracy)
    # Question by question: the harness moves the prompt's trailing newline into each choice, so its
    # log-likelihoods are specialize's plus one term, log P(newline | prompt), the same for every choice.
    samples = sorted(results["samples"]["specialize_labels"], key=lambda s: s["doc_id"])
    assert len(samples) == len(rows)
    for sample, scores in zip(samples, ours, strict=True):
        theirs = [float(resp[0][0]) for resp in sample["resps"]]
        offsets = [t - s for t, s in zip(theirs, scores, strict=True)]
        assert max(offsets) - min(offsets) < 1e-3 and max(offsets) <= 0
