"""Evaluation throughput: specialize's evaluation paths against a plain one-at-a-time `generate` loop.

What a user would otherwise write to evaluate a model is a loop calling transformers' `generate` on one prompt
after another. Both sides here answer the same validation prompts with SmolLM2-135M-Instruct in float32, greedily:

1. generation (../shared/datasets/math_gsm8k): the loop against `specialize.models.generation.generate_batch`
   (16 rows decoding together, finished rows replaced at once), same token budget per prompt. The answers must be
   the same; examples/s and answer agreement are printed.
2. classification (../shared/datasets/medical_pubmedqa, yes/no/maybe): the loop generating a short answer that
   is then matched to a label, against specialize's label scoring (every label's log-probability, batched, with
   the shared prompt prefix computed once). Examples/s, and how many loop answers were not a label at all (the
   invalid-answer rate that label scoring avoids by construction).

Run it with `make bench` or `python benchmarks/eval_throughput.py` (about 6 minutes on 2 cores; `--examples 4`
for a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from generate_loop import generate_one

DATA = Path(
    os.environ.get("SPECIALIZE_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)


def rows(name: str, n: int) -> list[dict]:
    path = DATA / name / "validation.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:n]


def loop_generate(model, tokenizer, prompts: list[str], budgets: list[int]) -> list[str]:
    return [
        tokenizer.decode(generate_one(model, tokenizer, p, b), skip_special_tokens=True).strip()
        for p, b in zip(prompts, budgets, strict=True)
    ]


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32, help="generation examples (classification: 2x)")
    parser.add_argument("--max-tokens", type=int, default=96, help="generation budget per answer")
    args = parser.parse_args()

    import torch

    from specialize.config import DEFAULT_BASE_MODEL
    from specialize.data import render_prompt
    from specialize.evaluate.scoring import pick_labels
    from specialize.models import load_model, resolve_model
    from specialize.models.generation import generate_batch

    model, tokenizer = load_model(resolve_model(DEFAULT_BASE_MODEL))
    model.eval()

    math = rows("math_gsm8k", args.examples)
    prompts = [render_prompt(tokenizer, r["messages"][:-1]) for r in math]
    budgets = [args.max_tokens] * len(prompts)
    print(
        f"generation: {len(prompts)} GSM8K questions, up to {args.max_tokens} tokens, one at a time ...",
        flush=True,
    )
    loop_answers, loop_s = timed(loop_generate, model, tokenizer, prompts, budgets)
    print("generation: batched ...", flush=True)
    batch_answers, batch_s = timed(generate_batch, model, tokenizer, prompts, budgets)
    same = sum(a == b for a, b in zip(loop_answers, batch_answers, strict=True))

    labels = ["yes", "no", "maybe"]
    qa = rows("medical_pubmedqa", 2 * args.examples)
    cls_prompts = [render_prompt(tokenizer, r["messages"][:-1]) for r in qa]
    print(f"classification: {len(qa)} PubMedQA questions, generate loop ...", flush=True)
    free, free_s = timed(loop_generate, model, tokenizer, cls_prompts, [4] * len(qa))
    invalid = sum(a.lower().strip(" .") not in labels for a in free)

    print("classification: label scoring ...", flush=True)
    predictions, score_s = timed(pick_labels, model, tokenizer, cls_prompts, labels)
    gold = [r["label"] for r in qa]
    free_acc = sum(a.lower().strip(" .") == g for a, g in zip(free, gold, strict=True)) / len(qa)
    score_acc = sum(p == g for p, g in zip(predictions, gold, strict=True)) / len(qa)
    n, m = len(prompts), len(qa)
    print(
        f"""
SmolLM2-135M-Instruct, float32, greedy, {torch.get_num_threads()} CPU threads, torch {torch.__version__}
                                          generate loop   specialize     ratio
generation (GSM8K, {n} questions)
  seconds                                 {loop_s:>13.1f}   {batch_s:>10.1f}
  examples/s                              {n / loop_s:>13.3f}   {n / batch_s:>10.3f}   {loop_s / batch_s:.2f}x
  answers identical to the loop's         {"":>13}   {same:>7} of {n}
classification (PubMedQA, {m} questions)    free answer     label scores
  seconds                                 {free_s:>13.1f}   {score_s:>10.1f}
  examples/s                              {m / free_s:>13.3f}   {m / score_s:>10.3f}   {free_s / score_s:.2f}x
  invalid answers (not a label)           {invalid:>13}   {0:>10}
  accuracy                                {free_acc:>13.3f}   {score_acc:>10.3f}"""
    )


if __name__ == "__main__":
    main()
