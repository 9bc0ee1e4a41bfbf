"""Batched decoding gives what one-at-a-time `generate` gives, while rows join, leave and use other adapters."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from specialize.data import render_prompt
from specialize.models.generation import DecodeBatch, Row, Sampling, generate_batch

QUESTIONS = [
    "hi",
    "What is the capital of France? Answer in one word, please, and then stop.",
    "reset my password",
    "The invoice total is due within 30 days of the date of issue; when is it due?",
    "fox",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


def prompts(tokenizer):
    return [render_prompt(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def one_at_a_time(model, tokenizer, prompt, max_new_tokens):
    enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, enc["input_ids"].shape[1] :].tolist()


def test_batched_greedy_matches_generate_while_rows_join_and_leave(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    texts = prompts(tokenizer)
    expected = [
        tokenizer.decode(one_at_a_time(model, tokenizer, p, 12), skip_special_tokens=True).strip()
        for p in texts
    ]
    # batch_size 2 < 5 prompts of different lengths: rows are merged into a running cache and removed from it
    assert generate_batch(model, tokenizer, texts, 12, batch_size=2) == expected
    assert generate_batch(model, tokenizer, texts, 12, batch_size=16) == expected


def test_batched_greedy_answers_are_the_adapters_not_the_base_models(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, target_modules="all-linear")).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    texts = prompts(tokenizer)
    tuned = [
        tokenizer.decode(one_at_a_time(model, tokenizer, p, 12), skip_special_tokens=True).strip()
        for p in texts
    ]
    with model.disable_adapter():
        plain = [
            tokenizer.decode(one_at_a_time(model, tokenizer, p, 12), skip_special_tokens=True).strip()
            for p in texts
        ]
        assert generate_batch(model, tokenizer, texts, 12) == plain  # adapter switched off: the base model
    assert tuned != plain
    assert generate_batch(model, tokenizer, texts, 12) == tuned


def test_rows_added_mid_decode_continue_exactly(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    texts = prompts(tokenizer)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in texts]
    batch = DecodeBatch(model, tokenizer.pad_token_id)
    batch.add([Row(ids[0], Sampling(8), tag=0)])
    for _ in range(3):
        batch.step()
    batch.add([Row(ids[1], Sampling(8), tag=1), Row(ids[2], Sampling(8), tag=2)])  # joins a 3-token-old row
    finished = {}
    while batch.rows:
        batch.step()
        for row in batch.remove([i for i, r in enumerate(batch.rows) if len(r.tokens) >= 8]):
            finished[row.tag] = row.tokens
    for i in range(3):
        solo = one_at_a_time(model, tokenizer, texts[i], 8)
        assert finished[i][: len(solo)] == solo  # generate stops at end-of-turn; the batch ran on to 8


def test_seeded_sampling_does_not_depend_on_batch_companions(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts(tokenizer)]

    def sample(companions):
        batch = DecodeBatch(model, tokenizer.pad_token_id)
        row = Row(ids[0], Sampling(10, temperature=1.0, top_p=0.9, seed=7))
        batch.add([row] + [Row(c, Sampling(10, temperature=0.7, seed=1)) for c in companions])
        for _ in range(10):
            batch.step()
        return row.tokens

    alone = sample([])
    assert sample(ids[1:4]) == alone
    assert len(set(alone)) > 1  # sampling at temperature 1 over a random model does not repeat one token


def test_rows_with_different_adapters_share_a_forward_pass(model_and_tokenizer, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    _, tokenizer = model_and_tokenizer
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = dict(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    model = get_peft_model(base, LoraConfig(**lora), adapter_name="a")
    torch.manual_seed(2)
    model.add_adapter("b", LoraConfig(**lora))
    model.eval()
    ids = tokenizer(prompts(tokenizer)[1], add_special_tokens=False)["input_ids"]

    def solo(adapter):
        batch = DecodeBatch(model, tokenizer.pad_token_id)
        row = Row(ids, Sampling(6), adapter=adapter)
        if adapter == "__base__":
            with model.disable_adapter():
                batch.add([row])
                for _ in range(6):
                    batch.step()
        else:
            model.set_adapter(adapter)
            batch.add([row])
            for _ in range(6):
                batch.step()
        return row.tokens

    expected = {name: solo(name) for name in ("a", "b", "__base__")}
    assert expected["a"] != expected["b"]
    batch = DecodeBatch(model, tokenizer.pad_token_id, mixed=True)
    rows = [Row(ids, Sampling(6), adapter=name) for name in ("a", "b", "__base__")]
    batch.add(rows)
    for _ in range(6):
        batch.step()
    assert {r.adapter: r.tokens for r in rows} == expected
