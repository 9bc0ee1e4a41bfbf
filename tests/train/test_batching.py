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
    passes,
    row_groups,
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


def test_shared_prefix_gives_the_plain_loss_and_gradients(tiny_model_dir, tiny_tokenizer):
    rows = [
        ("my parcel is late", "shipping"),
        ("refund the double charge please", "billing"),
        ("win big now", "spam"),
    ]
    examples = _examples(tiny_tokenizer, rows)
    batch = collate(examples, tiny_tokenizer.pad_token_id)
    assert int(batch["shared_prefix"]) > 16
    model = _lora(tiny_model_dir)
    shared = _grads(model, batch)
    plain = _grads(model, {**batch, "shared_prefix": torch.tensor(0)})
    assert shared[1] == plain[1]
    torch.testing.assert_close(shared[0], plain[0], rtol=1e-5, atol=1e-5)
    for name in plain[2]:
        torch.testing.assert_close(shared[2][name], plain[2][name], rtol=1e-4, atol=1e-6, msg=name)


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


def test_rows_of_uneven_length_run_in_groups_with_the_plain_loss_and_gradients(
    tiny_model_dir, tiny_tokenizer
):
    rows = [("late parcel", "shipping"), ("refund", "billing"), ("win", "spam")]
    rows.append((" ".join(["the parcel never came and nobody answers"] * 12), "shipping"))
    examples = _examples(tiny_tokenizer, rows)
    batch = collate(examples, tiny_tokenizer.pad_token_id)
    own = (batch["attention_mask"].sum(1) - int(batch["shared_prefix"])).tolist()
    assert len(row_groups(own)) == 2  # the long row runs alone
    model = _lora(tiny_model_dir)
    grouped = _grads(model, batch)
    model.zero_grad()
    total = 0
    for e in examples:  # reference: transformers' own forward, one unpadded example at a time
        ids = torch.tensor([e.input_ids])
        logits = model(input_ids=ids).logits[0, :-1]
        labels = torch.tensor(e.labels[1:])
        total = total + torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    total.backward()
    torch.testing.assert_close(grouped[0], total.detach(), rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grouped[2][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_row_groups_split_only_where_padding_outweighs_a_pass():
    assert row_groups([40, 41, 40, 43, 42]) == [[0, 2, 1, 4, 3]]
    groups = row_groups([92, 95, 92, 173, 108, 111])
    assert groups[-1] == [3] and sorted(i for g in groups for i in g) == list(range(6))
    assert row_groups([10, 200], pass_cost=1000) == [[0, 1]]


def test_a_gpu_runs_a_batch_in_one_padded_pass_and_a_cpu_saves_prefix_and_padding():
    lengths = [92, 95, 92, 173]
    assert passes(torch.device("cuda"), 40, lengths) == (0, [[0, 1, 2, 3]])
    assert passes(torch.device("cpu"), 40, lengths) == (40, row_groups([52, 55, 52, 133]))
