"""The peer of specialize's batched decoding in the benchmarks: transformers' `generate`, one prompt at a time."""

from __future__ import annotations

from typing import Any


def generate_one(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy new tokens for one rendered prompt, up to the end-of-turn token (included when reached)."""
    import torch

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
