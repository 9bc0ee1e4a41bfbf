"""The shortcuts of the training step change its cost, never its result."""

from __future__ import annotations

import random

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from specialize.data import encode_conversation
from specialize.train.batching import (
    collate,
    length_grouped_batches,
    packs,
    passes,
    shared_prefix_length,
    summed_loss,
)

INSTRUCTIONS = "Classify the customer message into billing, shipping or spam. Reply with the label only.\n\n"


def _examples(tokenizer, texts_labels):
    return [
        encode_conversation(
            tokenizer, [{"role": "user", "content": INSTRUCTIONS + t}, {"role": "assistant", "content": a}]
        )
        for t, a in texts_labels
    ]


def _lora(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    return model


def _grads(model, batch):
    model.zero_grad()
    loss, n = summed_loss(model, batch)
    loss.backward()
    return loss.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def test_prefix_stops_before_any_target_and_leaves_a_token_per_row(tiny_tokenizer):
    examples = _examples(tiny_tokenizer, [("a", "spam"), ("a", "billing")])
    n = shared_prefix_length(examples)
    for e in examples:
        assert all(label == -100 for label in e.labels[: n + 1])
        assert n < len(e.input_ids)
    assert shared_prefix_length(examples[:1]) == 0


def test_batch_4_equals_batch_1_with_accumulation_4(tiny_model_dir, tiny_tokenizer):
    examples = _examples(
        tiny_tokenizer,
        [
            ("late parcel", "shipping"),
            ("refund", "billing"),
            ("prize", "spam"),
            ("where is my order", "shipping"),
        ],
    )
    model = _lora(tiny_model_dir)
    loss4, n4, grads4 = _grads(model, collate(examples, tiny_tokenizer.pad_token_id))
    model.zero_grad()
    singles = [collate([e], tiny_tokenizer.pad_token_id) for e in examples]
    total = sum(int((b["targets"] != -100).sum()) for b in singles)
    for b in singles:
        loss, _ = summed_loss(model, b)
        (loss / total).backward()
    assert total == n4
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads4[name] / n4, rtol=1e-4, atol=1e-6, msg=name)


def test_length_grouped_batches_cover_every_example_once():
    lengths = [random.Random(i).randint(5, 300) for i in range(103)]
    batches = length_grouped_batches(lengths, 8, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert all(len(b) <= 8 for b in batches)


def test_a_cpu_packs_a_batch_and_a_gpu_runs_it_padded(tiny_model_dir):
    config = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config
    assert packs(config, torch.device("cpu")) and not packs(config, torch.device("cuda"))


def test_a_long_batch_runs_as_passes_under_the_budget_with_every_row_once(tiny_tokenizer):
    rows = [("short", "spam"), ("a longer message " * 3, "billing")] + [
        ("word " * k, "shipping") for k in range(6)
    ]
    examples = _examples(tiny_tokenizer, rows)
    lengths = [len(e.input_ids) for e in examples]
    prefix = shared_prefix_length(examples)
    computed = sum(lengths) - prefix * (len(examples) - 1)
    assert passes(examples, None) == [examples]
    assert passes(examples, computed) == [examples]  # the shared prefix counted once: it fits in one pass
    budget = sum(lengths) // 3
    parts = passes(examples, budget)
    assert len(parts) == -(-sum(lengths) // budget)
    assert [e for part in parts for e in part] == examples  # consecutive, each row once
    share = sum(lengths) / len(parts)  # about equal: no part passes its share by more than one row
    assert all(sum(len(e.input_ids) for e in part) < share + max(lengths) for part in parts)
    assert passes(examples, 1) == [[e] for e in examples]  # a row over the budget runs alone
