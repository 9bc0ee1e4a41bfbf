"""The memory pre-check's activation term against what a training pass really keeps for its backward pass.

A tiny model's peak RSS is Python and torch, not activations, so the process peak cannot be compared here
(`benchmarks/train_throughput.py` prints the estimate next to SmolLM2-135M's measured peak); what can be
measured exactly is every byte the forward pass saves for the backward pass, which the formula models.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from specialize.data import encode_conversation
from specialize.train.batching import collate, pass_tokens, target_losses
from specialize.train.fused_lora import fused_lora
from specialize.train.resources import activation_floats


def _saved_bytes(model, batch) -> int:
    """Bytes the forward pass keeps for the backward pass: distinct storages, parameters left out."""
    storages: dict[int, int] = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with fused_lora(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        target_losses(model, batch)
    return sum(storages.values())


def test_activation_estimate_is_within_a_fifth_of_what_a_fused_pass_saves(tmp_path, tiny_tokenizer):
    # SmolLM2's proportions, scaled down: grouped-query attention, intermediate about 2.7 x hidden, and enough
    # layers that the per-layer activations outweigh what a pass keeps once (attention masks, rotary tables);
    # rows of similar length, as length-grouped batches have them
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=12,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tmp_path),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    ).train()
    examples = [
        encode_conversation(
            tiny_tokenizer,
            [
                {"role": "user", "content": "question " * (3 + k % 2)},
                {"role": "assistant", "content": "a worked answer " * (60 + k // 3)},
            ],
        )
        for k in range(8)
    ]
    tokens = pass_tokens(examples, None)
    estimated = activation_floats(model.config, fused=True) * 4 * tokens
    measured = _saved_bytes(model, collate(examples, tiny_tokenizer.pad_token_id))
    assert 0.8 * measured <= estimated <= 1.2 * measured, (estimated, measured)
    unfused = activation_floats(model.config, fused=False) * 4 * tokens
    assert unfused > estimated  # PEFT's own path keeps more, and the estimate says so
