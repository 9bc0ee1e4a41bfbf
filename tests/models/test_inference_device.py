"""Where evaluation and serving run a model: a CUDA GPU, in bfloat16 where it has bfloat16 units, when PyTorch sees
one (the `gpu` tests); the CPU in float32 otherwise, as before."""

from __future__ import annotations

import json
import queue

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from specialize.evaluate.scoring import label_log_probs
from specialize.models import for_inference, load_model
from specialize.models.engine import Delta, Done, Request, load_engine
from specialize.models.generation import Sampling

PROMPTS = ["Label this message: where is my delivery", "Label this message: win a free prize now"]
LABELS = ["billing", "shipping", "spam"]


def _prompts(tokenizer) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in PROMPTS
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path, on a machine without CUDA")
def test_without_a_gpu_the_model_stays_on_the_cpu_in_float32(tiny_model_dir):
    model = for_inference(load_model(tiny_model_dir)[0])
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not model.training


@pytest.mark.gpu
def test_on_a_gpu_the_model_runs_there_in_bfloat16(tiny_model_dir):
    model = for_inference(load_model(tiny_model_dir)[0])
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    assert {p.dtype for p in model.parameters()} == {expected}


@pytest.mark.gpu
def test_label_scores_on_the_gpu_match_the_cpu(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cpu = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    gpu = for_inference(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    prompts = _prompts(tokenizer)
    expected = label_log_probs(cpu, tokenizer, prompts, LABELS)
    got = label_log_probs(gpu, tokenizer, prompts, LABELS)
    # bfloat16 keeps 8 bits of mantissa: about 0.4% of each product; summed over a label's few tokens the
    # log-probabilities (around -6 for the tiny model) move by hundredths, not tenths.
    assert got.shape == expected.shape
    assert abs(got - expected).max() < 0.15


@pytest.mark.gpu
def test_the_engine_serves_from_the_gpu(tiny_model_dir):
    engine = load_engine(tiny_model_dir, max_batch=4, max_adapters=2).start()
    try:
        assert next(engine.model.parameters()).device.type == "cuda"
        ids = engine.encode_chat([{"role": "user", "content": PROMPTS[0]}])
        events: queue.Queue = queue.Queue()
        engine.submit(Request(ids, None, Sampling(6), events.put, ()))
        text, done = "", None
        while done is None:
            event = events.get(timeout=60)
            if isinstance(event, Delta):
                text += event.text
            elif isinstance(event, Done):
                done = event
        assert done.completion_tokens > 0
    finally:
        engine.stop()


@pytest.mark.gpu
def test_a_run_trains_and_evaluates_on_the_gpu(finish_run):
    run = finish_run(train={"max_steps": 3, "batch_size": 4, "device": "cuda"})
    report = json.loads(run.run_dir.eval.joinpath("report.json").read_text())
    assert {"base_zero_shot", "fine_tuned"} <= set(report["systems"])
    for metrics in report["systems"].values():
        assert 0.0 <= metrics["accuracy"] <= 1.0
