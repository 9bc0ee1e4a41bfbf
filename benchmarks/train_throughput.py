"""Training throughput: specialize's trainer against TRL's `SFTTrainer`, side by side on a CPU.

Both fine-tune SmolLM2-135M-Instruct (float32) with LoRA rank 16, alpha 32, dropout 0 on every linear layer,
batch 8, learning rate 2e-4 on a cosine schedule, for the same N optimizer steps over the same N x 8 examples
(the first ones of a training split, one epoch each), with the loss on the assistant answer only. It runs two
kinds of data, one table each: legal_unfair_tos (12 steps), whose rows open with the same long instruction, and
math_gsm8k (6 steps), whose rows share nothing but the chat template's first tokens; the summary after them
gives each set's ratio of tokens/s and both sides' MFU against one matmul reference measured in the same run. Each side runs in its own child process so that its peak memory (ru_maxrss) is its own. For each side it
reports:

- trained tokens: non-padding tokens of the batches actually trained on. Both trainers see the same examples
  once, so the count is the same on both sides; what differs is how much padding each computes on top of it.
- tokens/s: those tokens over the training loop's time (model loading, tokenising and validation excluded).
- validation loss: mean token cross-entropy on the answer tokens (answer plus end-of-turn) of the first 64
  (`--max-val`) validation examples, computed by `validation_loss` below for both saved adapters, each loaded
  with PEFT onto a freshly loaded base model, one unpadded example at a time, so neither grades itself.
- model FLOPs utilisation (MFU): the model FLOPs of the tokens each side computed, over its training loop's
  time, over this machine's float32 matmul FLOP/s (best of several 2048 x 2048 matmuls, measured before and
  after training, the better kept). The model FLOPs of LoRA training are

      (4 x P_body + 6 x P_lora) x computed tokens + 4 x d x V x loss positions + 12 x layers x d x query-key pairs

  where P_body is the base's parameters less the token embedding (frozen: 2 for the forward pass, 2 for the
  gradient of the activations), P_lora the adapter's (also 2 for their weight gradient), d x V the lm_head,
  needed only where a loss is taken, and the last term the attention scores and their weighting (4 x d per
  pair per layer forward, twice that backward, as in PaLM's MFU) over the causal query-key pairs of the
  tokens computed. Computed tokens and pairs leave padding out. TRL computes every trained token, each
  attending causally within its example; specialize runs a prefix shared by a batch once, then each row's own
  tokens, which attend to the prefix and causally to their row (its batches are replayed from the same seed
  to count them, and checked against the count train() reports). The conventional 6 x P per computed token
  (P = every base parameter, the tied embedding counted once) plus the same attention term is printed for
  reference; it overstates the work of LoRA training, which computes no gradient for frozen weights.

With `--device cuda` both sides train on the GPU under bfloat16 autocast (TRL's `bf16=True`, specialize's
`train.precision: auto`), and MFU is taken against this GPU's bfloat16 matmul FLOP/s. `--model DIR` trains
another model directory, e.g. a randomly initialised SmolLM2-135M where the real weights cannot be copied.

With `--compile` (and `--device cuda`) specialize trains with `train.compile: true`: its decoder layers
compiled by torch.compile, whose compilation in the first steps counts in its training loop's time, as a user
pays it; give enough `--steps` (e.g. 40) for the compiled steps to outweigh it.

With `--processes 2` specialize also trains data-parallel in 2 processes on this machine (started by torchrun,
gloo between CPU processes, one thread each), with the same global batch of 8 (4 per process) over the same
examples, and the table adds its column and its ratio to the one-process run and to TRL's (TRL runs in one
process). Memory there is rank 0's.


Run it with `make bench`, or `python benchmarks/train_throughput.py` (about 10 minutes on 2 cores for both
sets, most of it TRL's; `--data DIR` for one set, `--steps 2 --max-val 8` for a smoke test). Why: specialize
hand-writes its training loop for CPU speed (see `specialize/train/batching.py`); this shows what that buys
against the standard library, at equal quality, on data with and without a shared instruction.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
# Two kinds of data, each run for a few minutes: rows that open with the same long instruction (85 of a
# legal_unfair_tos row's 140 tokens, which a batch computes once), and chat rows that share nothing but the chat
# template's first tokens (GSM8K word problems, with answers of a few hundred tokens). Steps and validation
# examples per set.
SETS = {"legal_unfair_tos": (12, 64), "math_gsm8k": (6, 16)}
BATCH, RANK, ALPHA, LEARNING_RATE = 8, 16, 32, 2e-4
SIDES = {"trl": "TRL SFTTrainer", "specialize": "specialize"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, help="optimizer steps per side and data set (batch 8); default: each set's own"
    )
    parser.add_argument("--max-val", type=int, help="validation examples to score; default: each set's own")
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=[DATASETS / name for name in SETS],
        help="data sets (each holds train.jsonl and validation.jsonl), one table each",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: both sides on the GPU under bfloat16 autocast, MFU against bfloat16 matmuls",
    )
    parser.add_argument(
        "--model", type=Path, help="a model directory to train instead of SmolLM2-135M-Instruct"
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="also train specialize data-parallel in this many processes"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="specialize with train.compile (torch.compile of its decoder layers; --device cuda only)",
    )
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        figures = run_side(
            args.side, args.work, args.steps, args.device, args.model, args.processes, args.compile
        )
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
            args.out.write_text(json.dumps(figures))
        return
    if args.compile and args.device != "cuda":
        parser.error("--compile needs --device cuda: train.compile is refused on a CPU")
    if args.processes < 1 or BATCH % args.processes:
        parser.error(f"--processes must divide the batch of {BATCH} (1, 2, 4 or 8)")

    if args.model and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there; give a Hugging Face model directory")
    plans = []
    for data in args.data:
        missing = [f for f in ("train.jsonl", "validation.jsonl") if not (data / f).is_file()]
        if missing:
            parser.error(f"--data {data}: no {' or '.join(missing)} there (the shared datasets folder?)")
        default_steps, default_val = SETS.get(data.name, (12, 64))
        steps, max_val = args.steps or default_steps, args.max_val or default_val
        train_rows = _read(data / "train.jsonl")
        if not 0 < steps * BATCH <= len(train_rows):
            parser.error(f"--steps must be 1..{len(train_rows) // BATCH} so both sides train on one epoch")
        plans.append((data, steps, train_rows[: steps * BATCH], _read(data / "validation.jsonl")[:max_val]))
    flops = matmul_flops(args.device)
    tables = []
    runs = [(side, name, 1) for side, name in SIDES.items()]
    if args.processes > 1:
        runs.append(("specialize", f"specialize x{args.processes}", args.processes))
    for data, steps, train_rows, val_rows in plans:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            _write(work / "train.jsonl", train_rows)
            _write(work / "validation.jsonl", val_rows)
            results = {}
            for side, name, processes in runs:
                print(f"{data.name}, training with {name}: {steps} steps ...", file=sys.stderr, flush=True)
                out = work / f"{side}-{processes}.json"
                launcher = [sys.executable]
                if processes > 1:
                    launcher += [
                        "-m",
                        "torch.distributed.run",
                        "--standalone",
                        "--nproc-per-node",
                        str(processes),
                    ]
                cmd = [*launcher, __file__, "--side", side, "--steps", str(steps), "--work", str(work)]
                cmd += ["--device", args.device, "--processes", str(processes)]
                cmd += ["--model", str(args.model)] if args.model else []
                cmd += ["--compile"] if args.compile else []
                started = time.perf_counter()
                child = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True)
                if child.returncode != 0:
                    sys.exit(f"{name} failed on {data.name}:\n{child.stdout}{child.stderr}")
                key = side if processes == 1 else name
                results[key] = {**json.loads(out.read_text()), "wall_seconds": time.perf_counter() - started}
        tables.append((data.name, steps, len(val_rows), results))
    # Measured again after every side: on a shared machine one short measurement can land in a busy moment, and
    # a low reference would inflate MFU; the better of the two is the machine's capability, and every table's
    # MFU is taken against this one figure.
    flops = max(flops, matmul_flops(args.device))
    for name, steps, n_val, results in tables:
        _print_table(name, results, flops, steps, n_val, args.device, args.model, args.compile)
    _print_summary(tables, flops, args.device)


def run_side(
    side: str,
    work: Path,
    steps: int,
    device: str,
    model: Path | None,
    processes: int = 1,
    compiled: bool = False,
) -> dict[str, Any]:
    """Train one side in this process (one of `processes`); report its figures (peak memory taken before
    validation). Under torchrun, the processes other than rank 0 return once trained."""
    import torch

    from specialize.models import resolve_model

    model_path = model or resolve_model("smollm2-135m-instruct")
    if side == "trl":
        figures = train_trl(model_path, work, steps, device)
    else:
        figures = train_specialize(model_path, work, steps, device, processes, compiled)
    if int(os.environ.get("RANK", "0")) != 0:
        return {}
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        figures["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    adapter = Path(figures.pop("adapter"))
    val_rows, train_rows = _read(work / "validation.jsonl"), _read(work / "train.jsonl")
    val_loss, params = validation_loss(model_path, adapter, val_rows)
    computed, pairs, loss_positions = _token_work(side, model_path, train_rows, device, processes)
    if side == "specialize" and computed != figures["computed_tokens"]:
        sys.exit(f"replayed batches compute {computed} tokens, train() reported {figures['computed_tokens']}")
    figures.setdefault("computed_tokens", figures["tokens"])  # TRL computes every token it trains on
    attention = 12 * params["layers"] * params["attention_width"] * pairs
    flops = (
        (4 * params["body"] + 6 * params["lora"]) * computed + 4 * params["head"] * loss_positions + attention
    )
    flops_6n = 6 * params["every"] * computed + attention
    return {**figures, "validation_loss": val_loss, "flops": flops, "flops_6n": flops_6n}


def train_trl(model_path: Path, work: Path, steps: int, device: str) -> dict[str, Any]:
    """TRL 1.16's SFTTrainer as its documentation configures LoRA SFT: on the CPU in float32, or on a GPU
    with its default bfloat16 mixed precision.

    The data is given in TRL's conversational prompt-completion format (prompt = the user turn, completion =
    the assistant turn), for which `completion_only_loss` (the default there, set explicitly) puts the loss on
    the completion only. The conversational "messages" format with `assistant_only_loss=True` is not usable:
    it needs `{% generation %}` markers in the chat template, SmolLM2's has none and TRL 1.16 ships no
    training template for it, so SFTTrainer raises. TRL's completion also takes the newline after <|im_end|>
    as a target, one token per example that specialize leaves out; the shared validation loss scores neither.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from specialize.config import TrainConfig

    messages = [r["messages"] for r in _read(work / "train.jsonl")]
    rows = [{"prompt": m[:-1], "completion": m[-1:]} for m in messages]
    args = SFTConfig(
        output_dir=str(work / "trl"),
        use_cpu=device == "cpu",
        model_init_kwargs={"dtype": "float32"},  # float32 weights; on a GPU, bfloat16 autocast on top
        bf16=device == "cuda",  # SFTConfig's default; off on the CPU, where specialize trains in float32
        # SFTConfig turns gradient checkpointing on by default, recomputing the forward pass (a third more
        # work) to save memory; specialize keeps activations, so both do the same arithmetic here.
        gradient_checkpointing=False,
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="cosine",  # specialize's schedule, with the same warm-up rounding
        warmup_steps=round(steps * TrainConfig().warmup_ratio),
        completion_only_loss=True,
        packing=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    peft_config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear")
    dataset = Dataset.from_list(rows)
    trainer = SFTTrainer(model=str(model_path), args=args, train_dataset=dataset, peft_config=peft_config)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    # TRL's own running count: the attention-mask ones of every batch it trained on, i.e. non-padding tokens.
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h][-1]
    trainer.save_model(str(work / "trl" / "adapter"))
    return {"adapter": str(work / "trl" / "adapter"), "tokens": int(tokens), "train_seconds": seconds}


def train_specialize(
    model_path: Path, work: Path, steps: int, device: str, processes: int = 1, compiled: bool = False
) -> dict[str, Any]:
    """specialize's `train()`; its `seconds` times the training loop alone, like the timer around TRL's.
    Data-parallel, each of the `processes` takes its share of every batch of 8. `compiled`: with
    `train.compile`, whose compilation in the first steps counts in the loop's time, as a user pays it."""
    from specialize.config import LoraConfig, TrainConfig
    from specialize.train import train

    config = TrainConfig(
        max_steps=steps,
        batch_size=BATCH // processes,
        lora=LoraConfig(rank=RANK, alpha=ALPHA),
        learning_rate=LEARNING_RATE,
        device=device,  # precision auto: float32 on the CPU, bfloat16 autocast on a GPU
        compile=compiled,
    )
    result = train(
        config,
        model_path,
        work / "train.jsonl",
        work / "validation.jsonl",
        work / f"specialize-{processes}",
        seed=0,
        progress=False,
    )
    return {
        "adapter": str(result.output_dir),
        "tokens": result.train_tokens,
        "computed_tokens": result.computed_tokens,
        "train_seconds": result.seconds,
        "own_validation_loss": result.validation_loss,
        "memory_estimate_mib": result.memory_estimate / 2**20,
    }


def validation_loss(
    model_path: Path, adapter: Path, val_rows: list[dict[str, Any]]
) -> tuple[float, dict[str, int]]:
    """Mean answer-token cross-entropy of base + `adapter` on `val_rows`, and the parameter counts for FLOPs."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in val_rows:
            prompt, answer = _encode(tokenizer, row["messages"])
            logits = model(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
            total += F.cross_entropy(logits.float(), torch.tensor(answer), reduction="sum").item()
            count += len(answer)

    config = base.config
    named = dict(model.named_parameters())
    every = sum(p.numel() for n, p in named.items() if "lora_" not in n)  # a tied embedding is listed once
    embedding = base.get_input_embeddings().weight.numel()
    head = base.get_output_embeddings().weight.numel()
    params = {
        "lora": sum(p.numel() for n, p in named.items() if "lora_" in n),
        "every": every,
        "head": head,
        "body": every - embedding - (0 if config.tie_word_embeddings else head),
        "layers": config.num_hidden_layers,
        "attention_width": config.num_attention_heads * config.head_dim,
    }
    return total / count, params


def _token_work(
    side: str, model_path: Path, train_rows: list[dict[str, Any]], device: str, processes: int = 1
) -> tuple[int, int, int]:
    """Tokens a side computed, their causal query-key pairs, and the positions where a loss is taken.

    TRL runs every example whole. specialize's batches are replayed as train() forms them (same tokenisation,
    same seed): on a CPU each batch (each process's share of it, and each pass of a long share,
    `batching.passes`) runs its shared prefix once, then every row's own tokens.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from specialize.data import encode_conversation
    from specialize.train.batching import (
        PASS_TOKENS,
        collate,
        computed_tokens,
        length_grouped_batches,
        packs,
        passes,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    loss_positions = sum(len(_encode(tokenizer, row["messages"])[1]) for row in train_rows)
    if side == "trl":
        lengths = [sum(map(len, _encode(tokenizer, row["messages"]))) for row in train_rows]
        return sum(lengths), sum(n * (n + 1) // 2 for n in lengths), loss_positions
    encoded = [encode_conversation(tokenizer, row["messages"]) for row in train_rows]
    config, on = AutoConfig.from_pretrained(model_path), torch.device(device)
    computed = pairs = 0
    budget = PASS_TOKENS if packs(config, on) else None
    share = BATCH // processes
    batches = length_grouped_batches([len(e.input_ids) for e in encoded], BATCH, random.Random(0))
    shares = [b[i : i + share] for b in batches for i in range(0, len(b), share)]
    for batch in shares:
        for part in passes([encoded[i] for i in batch], budget):
            collated = collate(part, tokenizer.pad_token_id)
            computed += computed_tokens(collated, config, on)
            prefix = int(collated["shared_prefix"]) if packs(config, on) else 0
            lengths = collated["attention_mask"].sum(dim=1).tolist()
            pairs += prefix * (prefix + 1) // 2 + sum(
                n * (n + 1) // 2 - prefix * (prefix + 1) // 2 for n in lengths
            )
    return computed, pairs, loss_positions


def matmul_flops(device: str = "cpu", repeats: int = 10) -> float:
    """Matmul FLOP/s of this machine: the best of `repeats` square products after a warm-up; float32 2048 x
    2048 on the CPU, bfloat16 8192 x 8192 on a GPU (the precision each side trains in there)."""
    import torch

    n, dtype = (2048, torch.float32) if device == "cpu" else (8192, torch.bfloat16)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def _encode(tokenizer: Any, messages: list[dict[str, str]]) -> list[list[int]]:
    """Prompt ids as at inference (chat template + generation prompt), and the answer ids with end-of-turn."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    answer = messages[-1]["content"] + tokenizer.eos_token
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (prompt, answer)]


def _print_table(
    data: str,
    results: dict[str, dict[str, Any]],
    flops: float,
    steps: int,
    n_val: int,
    device: str,
    model: Path | None,
    compiled: bool = False,
) -> None:
    trl, spec = results["trl"], results["specialize"]
    parallel = next((name for name in results if name not in SIDES), None)
    for r in results.values():
        r["tokens_per_second"] = r["tokens"] / r["train_seconds"]
        r["mfu"] = r["flops"] / r["train_seconds"] / flops
    rows = [
        ("trained tokens (non-padding)", "tokens", "{:,.0f}"),
        ("computed tokens (shared prefix once)", "computed_tokens", "{:,.0f}"),
        ("training loop (s)", "train_seconds", "{:.1f}"),
        ("tokens/s", "tokens_per_second", "{:.1f}"),
        (f"validation loss ({n_val} examples)", "validation_loss", "{:.4f}"),
        ("peak memory, RSS (MiB)", "peak_rss_mib", "{:,.0f}"),
        ("memory pre-check's estimate (MiB)", "memory_estimate_mib", "{:,.0f}"),
        *([("peak GPU memory allocated (MiB)", "peak_gpu_mib", "{:,.0f}")] if device == "cuda" else []),
        ("process wall time (s)", "wall_seconds", "{:.1f}"),
        ("MFU", "mfu", "{:.1%}"),
    ]
    precision = "float32 on the CPU" if device == "cpu" else "bfloat16 autocast on the GPU"
    print(
        f"\n{model or 'SmolLM2-135M-Instruct'}, LoRA r={RANK} all-linear, {precision}, batch {BATCH}, "
        f"{steps} steps on the same {steps * BATCH} examples of {data}"
        + (", specialize with train.compile" if compiled else "")
    )
    columns = [trl, spec] + ([results[parallel]] if parallel else [])
    print(f"{'':38}{SIDES['trl']:>16}{SIDES['specialize']:>14}" + (f"{parallel:>16}" if parallel else ""))
    for label, key, fmt in rows:
        cells = [  # TRL makes no memory estimate
            f"{fmt.format(c[key]) if key in c else '-':>{w}}"
            for c, w in zip(columns, (16, 14, 16), strict=False)
        ]
        print(f"{label:38}" + "".join(cells))
    speedup = spec["tokens_per_second"] / trl["tokens_per_second"]
    diff = (spec["validation_loss"] - trl["validation_loss"]) / trl["validation_loss"]
    print(f"\nspecialize / TRL tokens/s:            {speedup:.2f}x")
    if parallel:
        many = results[parallel]["tokens_per_second"]
        print(f"{parallel + ' / TRL tokens/s:':38}{many / trl['tokens_per_second']:.2f}x")
        print(f"{parallel + ' / specialize tokens/s:':38}{many / spec['tokens_per_second']:.2f}x")
    print(f"validation loss, specialize vs TRL:   {diff:+.2%}")
    matmul = "float32 matmul (2048 x 2048):" if device == "cpu" else "bfloat16 matmul (8192 x 8192):"
    print(f"{matmul:38}{flops / 1e9:,.1f} GFLOP/s")
    for side, r in (
        ("TRL", trl),
        ("specialize", spec),
        *([(parallel, results[parallel])] if parallel else []),
    ):
        per_token, six_n = r["flops"] / r["computed_tokens"] / 1e6, r["flops_6n"] / r["computed_tokens"] / 1e6
        label = f"FLOPs/token computed, {side}:"
        print(f"{label:38}{per_token:.0f} M (LoRA) / {six_n:.0f} M (6N), attention included")
    own = spec["own_validation_loss"]
    print(f"specialize's own validation loss:     {own:.4f} (from train(), its batched loop, same examples)")


def _print_summary(tables: list[tuple[str, int, int, dict[str, Any]]], flops: float, device: str) -> None:
    """One line per data set: the ratio of tokens/s and both MFUs, all against the same matmul reference."""
    matmul = "float32 matmul 2048 x 2048" if device == "cpu" else "bfloat16 matmul 8192 x 8192"
    print(f"\nsummary ({matmul}: {flops / 1e9:,.1f} GFLOP/s, measured in this run)")
    print(f"{'':38}{'specialize/TRL':>16}{'MFU TRL':>10}{'MFU spec.':>11}{'val. loss':>11}")
    for name, _, _, r in tables:
        trl, spec = r["trl"], r["specialize"]
        ratio = spec["tokens_per_second"] / trl["tokens_per_second"]
        diff = (spec["validation_loss"] - trl["validation_loss"]) / trl["validation_loss"]
        print(f"{name:38}{ratio:>15.2f}x{trl['mfu']:>10.1%}{spec['mfu']:>11.1%}{diff:>+11.2%}")


def _read(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
