"""Model outputs for evaluation: label scores for classification, greedy answers and answer loss otherwise.

Classification answers are constrained to the label set by scoring: the prompt runs once, and every label (with
the end-of-turn token, so that "Choice" cannot win over "Choice of law" by being a prefix) is scored by its total
log-probability in one more forward over all labels at once. A free-running
model can answer outside the label set; scoring measures what it knows rather than how it formats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from specialize.evaluate.calibration import LabelScores


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
                ids = torch.tensor([self.ids], device=model.device)
                self.cache = model(input_ids=ids, use_cache=True).cache

    def expanded(self, rows: int) -> Any:
        """A copy of the prefix cache for `rows` prompts (None when there is no shared prefix)."""
        import copy

        if self.cache is None:
            return None
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


def score_labels(
    model: Any, prefix: SharedPrefix, prompts: list[list[int]], label_ids: list[list[int]], pad_id: int
) -> list[list[float]]:
    """Total log-probability of each candidate answer after each prompt, for a batch of prompts.

    Prompts are right-padded after the shared prefix; each label continues from its own prompt's last token with
    explicit positions, so padding changes neither positions nor attention and the scores equal those of the
    prompt run alone (tested).
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    n = len(prefix.ids)
    lengths = [len(p) - n for p in prompts]
    width = max(lengths)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), n + width), dtype=torch.long)
    mask[:, :n] = 1
    for row, p in enumerate(prompts):
        ids[row, : lengths[row]] = torch.tensor(p[n:])
        mask[row, n : n + lengths[row]] = 1
    ids, mask = ids.to(base.device), mask.to(base.device)  # built on the CPU; the model may be on a GPU
    with torch.no_grad():
        out = decoder(input_ids=ids, attention_mask=mask, cache=prefix.expanded(len(prompts)), use_cache=True)
        last = out.last_hidden_state[torch.arange(len(prompts)), torch.tensor(lengths, device=ids.device) - 1]
        first = head(last).float().log_softmax(-1)
        scores = [[first[row, c[0]].item() for c in label_ids] for row in range(len(prompts))]
        _add_continuations(decoder, head, out.cache, mask, lengths, n, label_ids, scores)
    return scores


def _add_continuations(
    decoder: Any,
    head: Any,
    cache: Any,
    mask: Any,
    lengths: list[int],
    n: int,
    label_ids: list[list[int]],
    scores: list[list[float]],
) -> None:
    """Add the log-probabilities of every label token after the first, all labels in one pass.

    The labels' tokens are packed into one sequence per prompt with a tree-shaped attention mask: each token sees
    the prompt and the earlier tokens of its own label only, at the positions it would have after the prompt.
    Copying the prompt's cache once per label instead costs memory traffic that grows with labels x prompt
    length, and dominated evaluation (17 labels: 0.5 s of 0.9 s per question).
    """
    import torch

    packed = [
        (label, depth, token) for label, ids in enumerate(label_ids) for depth, token in enumerate(ids[:-1])
    ]
    if not packed:
        return
    device, dtype = (
        mask.device,
        head.weight.dtype,
    )  # an additive mask in the model's own dtype (bfloat16 on GPUs)
    owner = torch.tensor([p[0] for p in packed], device=device)
    depth = torch.tensor([p[1] for p in packed], device=device)
    rows, seen = len(lengths), mask.shape[1]
    blocked = torch.finfo(dtype).min
    own_label = (owner[:, None] == owner[None, :]) & (depth[None, :] <= depth[:, None])
    attention = torch.full((rows, 1, len(packed), seen + len(packed)), blocked, dtype=dtype, device=device)
    attention[:, 0, :, :seen] = torch.where(mask[:, None, :] == 1, 0.0, blocked)
    attention[:, 0, :, seen:] = torch.where(own_label, 0.0, blocked)
    tokens = torch.tensor([p[2] for p in packed], device=device).expand(rows, -1)
    positions = n + torch.tensor(lengths, device=device)[:, None] + depth[None, :]
    hidden = decoder(
        input_ids=tokens, attention_mask=attention, position_ids=positions, cache=cache
    ).last_hidden_state
    logp = head(hidden).float().log_softmax(-1)
    for q, (label, d, _) in enumerate(packed):
        target = label_ids[label][d + 1]
        for row in range(rows):
            scores[row][label] += logp[row, q, target].item()


def label_log_probs(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    labels: list[str],
    batch_size: int = 4,
    progress: Any = None,
) -> np.ndarray:
    """Each label's total log-probability after each prompt, shape (prompts, labels); prompts are scored
    `batch_size` at a time after their shared prefix. `progress`, if given, is called with the number of prompts
    just scored."""
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    prefix, label_ids = SharedPrefix(model, encoded), label_token_ids(tokenizer, labels)
    out: list[list[float]] = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        out += score_labels(model, prefix, batch, label_ids, tokenizer.pad_token_id)
        if progress is not None:
            progress(len(batch))
    return np.array(out, dtype=float).reshape(len(prompts), len(labels))


def label_scores(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    labels: list[str],
    rows: list[int],
    content_free: list[str],
    bare: str,
    batch_size: int = 4,
    progress: Any = None,
) -> LabelScores:
    """The one pass every scoring variant is computed from: the label log-probabilities after each question's
    prompt, and after the content-free and bare-instruction prompts, scored once for the label set (apart from
    the questions: they share a different prefix, and mixing them in would shorten the questions' shared one)."""
    questions = label_log_probs(model, tokenizer, prompts, labels, batch_size, progress)
    extra = label_log_probs(model, tokenizer, [*content_free, bare], labels, batch_size)
    lengths = np.array([len(ids) for ids in label_token_ids(tokenizer, labels)], dtype=float)
    return LabelScores(labels, rows, questions, lengths, extra[:-1], extra[-1])


def pick_labels(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    labels: list[str],
    batch_size: int = 4,
    progress: Any = None,
) -> list[str]:
    """The label of highest raw log-probability after each prompt (see `label_log_probs`)."""
    scores = label_log_probs(model, tokenizer, prompts, labels, batch_size, progress)
    return [labels[i] for i in scores.argmax(1)]


def answer_loss(model: Any, tokenizer: Any, prompt: str, answer: str) -> tuple[float, int]:
    """Summed cross-entropy of the reference `answer` after `prompt`, and its token count."""
    import torch
    import torch.nn.functional as F

    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + a], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=len(a) + 1).logits[0, :-1].float()
    return F.cross_entropy(logits, torch.tensor(a, device=ids.device), reduction="sum").item(), len(a)
