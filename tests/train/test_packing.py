"""A packed batch gives transformers' own per-example losses and gradients, on every packed architecture."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
)

from specialize.data import encode_conversation
from specialize.train.batching import collate, summed_loss
from specialize.train.packing import attention_groups, supports

INSTRUCTIONS = "Classify the customer message into billing, shipping or spam. Reply with the label only.\n\n"
ROWS = [
    ("late parcel", "shipping"),
    ("refund", "billing"),
    ("win", "spam"),
    (" ".join(["the parcel never came and nobody answers"] * 12), "shipping"),
]
SIZES = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
# Windows of 5 tokens are far shorter than the rows and the shared prefix, so a wrong window changes the loss.
CONFIGS = {
    "llama": lambda vocab: LlamaConfig(vocab_size=vocab, **SIZES),
    "qwen2": lambda vocab: Qwen2Config(
        vocab_size=vocab, use_sliding_window=True, sliding_window=5, max_window_layers=1, **SIZES
    ),
    "gemma3_text": lambda vocab: Gemma3TextConfig(
        vocab_size=vocab,
        head_dim=8,
        sliding_window=5,
        layer_types=["sliding_attention", "full_attention"],
        **SIZES,
    ),
    "phi3": lambda vocab: Phi3Config(vocab_size=vocab, sliding_window=5, pad_token_id=0, **SIZES),
    "mistral": lambda vocab: MistralConfig(vocab_size=vocab, sliding_window=5, **SIZES),  # not packed
}


@pytest.fixture(params=list(CONFIGS))
def lora_model(request, tmp_path, tiny_tokenizer):
    """A tiny randomly initialised model of one architecture, through `from_pretrained`, with LoRA."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(CONFIGS[request.param](len(tiny_tokenizer))).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert supports(model.config) == (request.param != "mistral")
    return get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_a_packed_batch_gives_the_per_example_loss_and_gradients(lora_model, tiny_tokenizer, shared_prefix):
    examples = [
        encode_conversation(
            tiny_tokenizer,
            [{"role": "user", "content": INSTRUCTIONS + t}, {"role": "assistant", "content": a}],
        )
        for t, a in ROWS
    ]
    batch = collate(examples, tiny_tokenizer.pad_token_id)
    assert int(batch["shared_prefix"]) > 16
    own = (batch["attention_mask"].sum(1) - batch["shared_prefix"]).tolist()
    assert len(attention_groups(own, int(batch["shared_prefix"]))) == 2  # the long row attends alone
    if not shared_prefix:
        batch["shared_prefix"] = torch.tensor(0)
    lora_model.zero_grad()
    loss, n = summed_loss(lora_model, batch)
    loss.backward()
    packed = {k: p.grad.clone() for k, p in lora_model.named_parameters() if p.requires_grad}
    lora_model.zero_grad()
    total = 0
    for e in examples:  # reference: transformers' own forward, one unpadded example at a time
        logits = lora_model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1]
        labels = torch.tensor(e.labels[1:])
        total = total + torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    total.backward()
    assert n == sum(label != -100 for e in examples for label in e.labels[1:])
    torch.testing.assert_close(loss.detach(), total.detach(), rtol=1e-5, atol=1e-5)
    for name, p in lora_model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(packed[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_attention_groups_split_only_where_padding_outweighs_a_group():
    assert attention_groups([40, 41, 40, 43, 42], 95) == [[0, 2, 1, 4, 3]]
    assert attention_groups([92, 95, 92, 173, 108, 111], 95)[-1] == [3]
    assert attention_groups([5], 0) == [[0]]
