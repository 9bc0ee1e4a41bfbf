"""Label scoring with a shared prefix cache gives the log-probabilities of a plain full forward pass."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from specialize.data import render_prompt
from specialize.evaluate.scoring import SharedPrefix, label_token_ids, score_labels

LABELS = ["billing", "shipping", "spam", "shipping delay"]


def _reference(model, prompt: list[int], label: list[int]) -> float:
    ids = torch.tensor([prompt + label])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(label))


def test_cached_scores_equal_full_forward(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    questions = ["Label this: where is my parcel", "Label this: refund me", "Label this: free prize, click"]
    prompts = [
        tiny_tokenizer(
            render_prompt(tiny_tokenizer, [{"role": "user", "content": q}]), add_special_tokens=False
        )["input_ids"]
        for q in questions
    ]
    labels = label_token_ids(tiny_tokenizer, LABELS)
    prefix = SharedPrefix(model, prompts)
    assert len(prefix.ids) > 5, "the system prompt and 'Label this:' are shared"
    # All at once (right-padded batch) and one by one: both equal the plain forward pass.
    batched = score_labels(model, prefix, prompts, labels, tiny_tokenizer.pad_token_id)
    for prompt, got in zip(prompts, batched, strict=True):
        expected = [_reference(model, prompt, label) for label in labels]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-4, atol=1e-4)
        [alone] = score_labels(model, prefix, [prompt], labels, tiny_tokenizer.pad_token_id)
        torch.testing.assert_close(torch.tensor(alone), torch.tensor(expected), rtol=1e-4, atol=1e-4)


def test_prompts_without_common_prefix_run_whole(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[5, 6, 7, 8, 30, 31], [9, 10, 11]]
    prefix = SharedPrefix(model, prompts)
    assert prefix.ids == []
    labels = label_token_ids(tiny_tokenizer, LABELS)
    for prompt, got in zip(prompts, score_labels(model, prefix, prompts, labels, 0), strict=True):
        expected = [_reference(model, prompt, label) for label in labels]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-4, atol=1e-4)
