"""lm-evaluation-harness through `specialize serve` against specialize's own label scoring, on the same questions.

Serves the embedded model (or `--model`), turns the first `--limit` rows of a classification file into a
multiple-choice task (the rendered chat prompt; each label followed by the end-of-turn token, as specialize scores
labels), runs it through the harness' `local-completions` model (log-likelihoods from `/v1/completions` with
`echo` and `logprobs`), and scores the same prompts with `evaluate/scoring.py` in this process. Printed: both
accuracies and how many questions the two pick the same label for.

Run: `python benchmarks/harness_agreement.py --data ../shared/datasets/medical_pubmedqa/validation.jsonl`
(needs `pip install lm-eval[api]`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import yaml


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="chat JSONL with a `label` field")
    parser.add_argument("--model", default=None, help="base model directory (default: the embedded one)")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specialize.config import DEFAULT_BASE_MODEL
    from specialize.data import render_prompt
    from specialize.evaluate.scoring import SharedPrefix, label_token_ids, score_labels
    from specialize.models import resolve_model

    model_dir = args.model or str(resolve_model(DEFAULT_BASE_MODEL))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lines = args.data.read_text(encoding="utf-8").splitlines()[: args.limit]
    examples = [json.loads(line) for line in lines if line.strip()]
    labels = sorted({e["label"] for e in examples})
    rows = [
        {
            "prompt": render_prompt(tokenizer, e["messages"][:-1]),
            "choices": [label + tokenizer.eos_token for label in labels],
            "gold": labels.index(e["label"]),
        }
        for e in examples
    ]

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    label_ids, ours = label_token_ids(tokenizer, labels), []
    for start in range(0, len(ids), 4):
        batch = ids[start : start + 4]
        ours += score_labels(model, SharedPrefix(model, batch), batch, label_ids, tokenizer.pad_token_id)
    our_picks = [max(range(len(labels)), key=s.__getitem__) for s in ours]

    root = Path(tempfile.mkdtemp(prefix="harness-"))
    url = f"http://127.0.0.1:{args.port}"
    command = [sys.executable, "-m", "specialize", "serve", "--no-auth", "--base-model", model_dir]
    command += ["--port", str(args.port), "--registry", f"sqlite:///{root / 'registry.db'}"]
    server = subprocess.Popen(command, stdout=(root / "server.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_ready(url, server)
        their_picks, accuracy = harness(url, model_dir, rows, root)
    finally:
        server.terminate()
        server.wait(timeout=60)
    our_accuracy = sum(p == r["gold"] for p, r in zip(our_picks, rows, strict=True)) / len(rows)
    same = sum(a == b for a, b in zip(our_picks, their_picks, strict=True))
    print(f"{args.data} ({len(rows)} questions, labels {labels}), model {model_dir}")
    print(f"lm-evaluation-harness (local-completions via specialize serve): accuracy {accuracy:.3f}")
    print(f"specialize label scoring (evaluate/scoring.py):                 accuracy {our_accuracy:.3f}")
    print(f"same label picked on {same} of {len(rows)} questions")


def harness(url: str, model_dir: str, rows: list[dict], root: Path) -> tuple[list[int], float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    (root / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = {
        "task": "labels",
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {"test": str(root / "questions.jsonl")},
            "cache_dir": str(root / "ds"),
        },
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc"}],
    }
    (root / "tasks").mkdir()
    (root / "tasks" / "labels.yaml").write_text(yaml.safe_dump(task), encoding="utf-8")
    os.environ.setdefault("OPENAI_API_KEY", "unused")  # the server runs with --no-auth
    served_model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "base_url": f"{url}/v1/completions",
            "model": served_model,
            "tokenizer": model_dir,
            "tokenizer_backend": "huggingface",
            "max_length": 8192,
            "batch_size": 4,
        },
        tasks=["labels"],
        task_manager=TaskManager(include_path=str(root / "tasks")),
        log_samples=True,
    )
    samples = sorted(results["samples"]["labels"], key=lambda s: s["doc_id"])
    picks = [max(range(len(s["resps"])), key=lambda i, s=s: float(s["resps"][i][0][0])) for s in samples]
    return picks, results["results"]["labels"]["acc,none"]


def wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit("the server did not start")


if __name__ == "__main__":
    main()
