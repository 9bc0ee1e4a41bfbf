"""On-policy throughput: specialize's GRPO against TRL's `GRPOTrainer`, side by side on a CPU.

Both run GRPO on SmolLM2-135M-Instruct (float32) with LoRA rank 16, alpha 32 on every linear layer, for the same
N optimizer steps over the same prompts (the first N x B user turns of the GSM8K training split), k samples per
prompt at temperature 1, at most M new tokens each, one update per batch of samples, no KL term (TRL's default
beta=0), and the same reward: the lenient GSM8K number verifier of `specialize.train.rewards`. Each side runs in
its own child process, under a time limit: TRL's GRPO is known to stall on CPUs (trl#3739), and a side that
fails or does not finish prints its error or the limit instead of a number. For each side it reports:

- sampled tokens: the answer tokens generated, over all steps (from TRL's logged mean completion length, and
  from specialize's `train/samples.jsonl`);
- trained tokens: prompt + answer tokens of every sample of every step, the batch both sides learn from
  (specialize skips the passes of samples whose advantage is 0, which teach nothing; TRL runs them);
- sampled tokens/s and trained tokens/s: those over the training loop's time (model loading excluded), so both
  rates include sampling, scoring and the update, as a user waits for them; specialize's sampling phase alone,
  as `train/metrics.jsonl` logs it, is printed below the table.

Run it with `make bench`, or `python benchmarks/onpolicy_throughput.py` (defaults: 4 steps of 4 prompts x 4
samples x 64 tokens; `--steps 1 --max-new-tokens 8` for a smoke test). Why: GRPO on the model's own samples is
where the lifecycle's preference stage learns most, and the common trainers need a GPU for it; this measures
what specialize's batched KV-cache sampling and packed training make of a CPU, against the standard library.
Timing figures are only meaningful from a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "math_gsm8k"
RANK, ALPHA, LEARNING_RATE, TEMPERATURE = 16, 32, 1e-5, 1.0
SIDES = {"trl": "TRL GRPOTrainer", "specialize": "specialize grpo"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per side")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest sampled answer")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a side may take (TRL may stall)")
    parser.add_argument("--data", type=Path, default=DATA, help="holds a GSM8K-style train.jsonl")
    parser.add_argument("--model", type=Path, help="a model directory instead of SmolLM2-135M-Instruct")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        args.out.write_text(json.dumps(run_side(args)))
        return
    if args.model and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there; give a Hugging Face model directory")
    if not (args.data / "train.jsonl").is_file():
        parser.error(f"--data {args.data}: no train.jsonl there (the shared datasets folder?)")
    rows = _read(args.data / "train.jsonl")[: args.steps * args.prompts]
    if len(rows) < args.steps * args.prompts:
        parser.error(f"--data has {len(rows)} rows, fewer than --steps x --prompts")
    results: dict[str, dict[str, Any] | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _write(work / "train.jsonl", rows)
        _write(work / "validation.jsonl", rows[:1])
        for side, name in SIDES.items():
            print(f"{name}: {args.steps} steps ...", file=sys.stderr, flush=True)
            out = work / f"{side}.json"
            cmd = [sys.executable, __file__, "--side", side, "--work", str(work), "--out", str(out)]
            cmd += [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if v is not None and k in PASSED
            ]
            started = time.perf_counter()
            try:
                child = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                results[side] = f"did not finish within {args.timeout:.0f} s (TRL's GRPO on a CPU: trl#3739)"
                continue
            if child.returncode != 0:
                results[side] = "failed: " + _last_error(child.stdout + child.stderr)
                continue
            results[side] = {**json.loads(out.read_text()), "wall_seconds": time.perf_counter() - started}
    _print_table(results, args)


PASSED = ("steps", "prompts", "k", "max_new_tokens", "model")


def run_side(args: argparse.Namespace) -> dict[str, Any]:
    from specialize.models import resolve_model

    model_path = args.model or resolve_model("smollm2-135m-instruct")
    return (train_trl if args.side == "trl" else train_specialize)(model_path, args)


def lenient_reward(answer: str, reference: str) -> float:
    """The lenient GSM8K number verifier, the same function on both sides."""
    from specialize.train import answer_number, reference_number

    got = answer_number(answer, strict=False)
    return float(got is not None and got == reference_number(reference))


def train_trl(model_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """TRL 1.16's GRPOTrainer as its documentation configures LoRA GRPO, on the CPU in float32, with
    transformers' `generate` for sampling (no vLLM on a CPU)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    rows = _read(args.work / "train.jsonl")
    dataset = Dataset.from_list(
        [{"prompt": r["messages"][:-1], "reference": r["messages"][-1]["content"]} for r in rows]
    )

    def reward(completions: list[Any], reference: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [lenient_reward(t, r) for t, r in zip(texts, reference, strict=True)]

    config = GRPOConfig(
        output_dir=str(args.work / "trl"),
        use_cpu=True,
        model_init_kwargs={"dtype": "float32"},
        bf16=False,
        gradient_checkpointing=False,  # specialize keeps activations: the same arithmetic on both sides
        per_device_train_batch_size=args.prompts * args.k,  # completions per step
        num_generations=args.k,
        max_completion_length=args.max_new_tokens,
        temperature=TEMPERATURE,
        beta=0.0,
        num_iterations=1,
        learning_rate=LEARNING_RATE,
        max_steps=args.steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    peft_config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear")
    trainer = GRPOTrainer(
        model=str(model_path),
        reward_funcs=reward,
        args=config,
        train_dataset=dataset,
        peft_config=peft_config,
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    sampled = sum(h["completions/mean_length"] * args.prompts * args.k for h in logs)
    trained = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h][-1]
    rewards = [h["reward"] for h in logs if "reward" in h]
    return {
        "sampled": sampled,
        "trained": float(trained),
        "seconds": seconds,
        "reward": sum(rewards) / max(len(rewards), 1),
    }


def train_specialize(model_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """specialize's `train()` with `train.method: grpo`; its `seconds` times the training loop alone."""
    from transformers import AutoTokenizer

    from specialize.config import FunctionReward, LoraConfig, TrainConfig
    from specialize.data import render_prompt
    from specialize.train import build_reward, train

    sys.path.insert(0, str(Path(__file__).parent))  # this module holds the reward function
    config = TrainConfig(
        method="grpo",
        max_steps=args.steps,
        batch_size=args.prompts,
        lora=LoraConfig(rank=RANK, alpha=ALPHA),
        learning_rate=LEARNING_RATE,
        log_every=1,
        onpolicy={"k": args.k, "max_new_tokens": args.max_new_tokens, "temperature": TEMPERATURE},
    )
    reward = build_reward(FunctionReward(type="function", function="onpolicy_throughput:specialize_reward"))
    out = args.work / "specialize"
    result = train(
        config,
        model_path,
        args.work / "train.jsonl",
        args.work / "validation.jsonl",
        out,
        progress=False,
        reward=reward,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompt_tokens = {
        r["messages"][0]["content"]: len(
            tokenizer(render_prompt(tokenizer, r["messages"][:-1]), add_special_tokens=False)["input_ids"]
        )
        for r in _read(args.work / "train.jsonl")
    }
    samples = _read(out / "samples.jsonl")
    metrics = [m for m in _read(out / "metrics.jsonl") if "sampled_tokens_per_second" in m]
    return {
        "sampled": float(sum(s["tokens"] for s in samples)),
        "trained": float(sum(s["tokens"] + prompt_tokens[s["prompt"]] for s in samples)),
        "seconds": result.seconds,
        "reward": sum(s["reward"] for s in samples) / len(samples),
        "sampling_rate": sum(m["sampled_tokens_per_second"] for m in metrics) / len(metrics),
    }


def specialize_reward(prompt: list[dict[str, str]], completion: str, row: dict[str, Any]) -> float:
    return lenient_reward(completion, row["messages"][-1]["content"])


def _print_table(results: dict[str, dict[str, Any] | str], args: argparse.Namespace) -> None:
    print(
        f"\n{args.model or 'SmolLM2-135M-Instruct'}, LoRA r={RANK} all-linear, float32 on the CPU, GRPO: "
        f"{args.steps} steps x {args.prompts} prompts x {args.k} samples, up to {args.max_new_tokens} new tokens"
    )
    rows = [
        ("sampled tokens", "sampled", "{:,.0f}"),
        ("trained tokens (prompt + answer)", "trained", "{:,.0f}"),
        ("training loop (s)", "seconds", "{:.1f}"),
        ("sampled tokens/s", "sampled_per_second", "{:.1f}"),
        ("trained tokens/s", "trained_per_second", "{:.1f}"),
        ("mean reward of the samples", "reward", "{:.3f}"),
        ("process wall time (s)", "wall_seconds", "{:.1f}"),
    ]
    for r in results.values():
        if isinstance(r, dict):
            r["sampled_per_second"] = r["sampled"] / r["seconds"]
            r["trained_per_second"] = r["trained"] / r["seconds"]
    print(f"{'':36}{SIDES['trl']:>18}{SIDES['specialize']:>18}")
    for label, key, fmt in rows:
        cells = [fmt.format(r[key]) if isinstance(r, dict) else "-" for r in results.values()]
        print(f"{label:36}" + "".join(f"{c:>18}" for c in cells))
    for side, r in results.items():
        if isinstance(r, str):
            print(f"\n{SIDES[side]}: {r}")
    trl, spec = results.get("trl"), results.get("specialize")
    if isinstance(trl, dict) and isinstance(spec, dict):
        print(
            f"\nspecialize / TRL sampled tokens/s: {spec['sampled_per_second'] / trl['sampled_per_second']:.2f}x"
        )
        print(
            f"specialize / TRL trained tokens/s: {spec['trained_per_second'] / trl['trained_per_second']:.2f}x"
        )
    if isinstance(spec, dict):
        print(f"specialize's sampling phase alone:  {spec['sampling_rate']:.1f} sampled tokens/s")


def _last_error(output: str) -> str:
    """The last line that reads like an error, else the output's last line."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1].strip()


def _read(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
