"""Model outputs for evaluation: label scores for classification, greedy answers and answer loss otherwise.

Classification answers are constrained to the label set by scoring: the prompt runs once, its key/value cache is
copied for the candidate labels, and every label (with the end-of-turn token, so that "Choice" cannot win over
"Choice of law" by being a prefix) is scored by its total log-probability in one batched forward. A free-running
model can answer outside the label set; scoring measures what it knows rather than how it formats.
"""

from __future__ import annotations

from typing import Any

LABEL_CHUNK = 16  # candidate labels scored per forward; bounds the copied cache for large label sets


def label_token_ids(tokenizer: Any, labels: list[str]) -> list[list[int]]:
    """The tokens of each label as an assistant answer, followed by the end-of-turn token."""
    end = tokenizer.eos_token or ""
    return [tokenizer(label + end, add_special_tokens=False)["input_ids"] for label in labels]


class SharedPrefix:
    """The key/value cache of the token prefix that all prompts of one evaluation share, computed once.

    Every prompt of a system repeats the same system prompt, task instructions and (few-shot) examples; on a CPU
    recomputing them for each question costs more than the question itself. Prompts that share nothing get an
    empty prefix and run whole.
    """

    def __init__(self, model: Any, prompts: list[list[int]]) -> None:
        import torch

        n = min(len(p) for p in prompts) - 1  # leave at least one token to run per prompt
        first = prompts[0]
        for p in prompts[1:]:
            n = next((i for i in range(n) if p[i] != first[i]), n)
        self.ids = first[:n]
        self.cache = None
        if n > 0:
            with torch.no_grad():
                self.cache = model(input_ids=torch.tensor([self.ids]), use_cache=True).past_key_values

    def run(self, model: Any, prompt: list[int]) -> tuple[Any, Any]:
        """Log-probabilities of the next token after `prompt`, and the cache of the whole prompt."""
        import copy

        import torch

        n = len(self.ids)
        cache = copy.deepcopy(self.cache) if n else None
        with torch.no_grad():
            out = model(input_ids=torch.tensor([prompt[n:]]), cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float().log_softmax(-1), out.past_key_values


def score_labels(
    model: Any, prefix: SharedPrefix, prompt: list[int], label_ids: list[list[int]], pad_id: int
) -> list[float]:
    """Total log-probability of each candidate answer after the tokens of `prompt`."""
    import torch

    first, cache = prefix.run(model, prompt)
    scores = []
    with torch.no_grad():
        for start in range(0, len(label_ids), LABEL_CHUNK):
            chunk = label_ids[start : start + LABEL_CHUNK]
            scores += _score_chunk(model, cache, len(prompt), first, chunk, pad_id)
    return scores


def _score_chunk(
    model: Any, cache: Any, n_prompt: int, first: Any, chunk: list[list[int]], pad_id: int
) -> list[float]:
    import copy

    import torch

    longest = max(len(c) for c in chunk)
    scores = [first[c[0]].item() for c in chunk]
    if longest == 1:
        return scores
    cont = torch.full((len(chunk), longest - 1), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), n_prompt + longest - 1), dtype=torch.long)
    mask[:, :n_prompt] = 1
    for row, c in enumerate(chunk):
        cont[row, : len(c) - 1] = torch.tensor(c[:-1])
        mask[row, n_prompt : n_prompt + len(c) - 1] = 1
    expanded = copy.deepcopy(cache)
    expanded.batch_repeat_interleave(len(chunk))
    logp = model(input_ids=cont, cache=expanded, attention_mask=mask).logits.float().log_softmax(-1)
    for row, c in enumerate(chunk):
        scores[row] += sum(logp[row, j, c[j + 1]].item() for j in range(len(c) - 1))
    return scores


def generate_answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    """Greedy answer to a prompt, up to the end-of-turn token."""
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
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def answer_loss(model: Any, tokenizer: Any, prompt: str, answer: str) -> tuple[float, int]:
    """Summed cross-entropy of the reference `answer` after `prompt`, and its token count."""
    import torch
    import torch.nn.functional as F

    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + a])
    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=len(a) + 1).logits[0, :-1].float()
    return F.cross_entropy(logits, torch.tensor(a), reduction="sum").item(), len(a)
