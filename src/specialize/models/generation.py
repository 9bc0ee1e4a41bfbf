"""Batched text generation with a KV cache, rows joining and leaving between steps.

`transformers`' `generate` runs one fixed batch to the end: a request that arrives while it runs waits for the
slowest row, its streamers handle one row only, and every row shares one set of sampling parameters. Serving many
clients needs the opposite, so this module keeps one `DecodeBatch` whose rows are prompts at different points:
new prompts are pre-filled together and merged into the running cache (left-padded to a common length, the
padding masked out), finished rows are dropped from it, and every row has its own temperature, top-p, seed and
adapter. Evaluation uses the same engine through `generate_batch`, and on-policy training (online DPO, GRPO)
samples through `sample_batch`, which records each sampled token's log-probability.

A row may also ask for log-probabilities (`Row.logprobs`): of each token it generates and of the most likely
alternatives, and with `Row.echo` of every prompt token after the first, as evaluation harnesses score answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass(frozen=True)
class Sampling:
    """How one row picks its next token: greedy when `temperature` is 0."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the model (before temperature) and the `top` most likely ids there."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Row:
    """One prompt being continued; `tokens` are the generated ids so far.

    `logprobs=k` records each generated token's log-probability and the k most likely tokens at its place
    (`token_logprobs`); `echo` also records them for the prompt's tokens after the first (`prompt_logprobs`).
    """

    prompt: list[int]
    sampling: Sampling
    adapter: str = BASE_ADAPTER
    tag: Any = None  # the caller's handle (a request), carried along untouched
    tokens: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    logprobs: int | None = None
    echo: bool = False
    token_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)


class DecodeBatch:
    """The rows being decoded together, their KV cache, attention mask and next positions.

    Call `add` with new rows (pre-fills them), `step` for one token of every row, and `remove` for the rows that
    are done. `mixed` says whether rows with different adapters may share one forward pass (PEFT supports that for
    LoRA, not for DoRA): each row's adapter is passed to PEFT, and a row that names none gets the base model. Not
    mixed (the default), the model as it is serves every row: its active adapter, or the base where the adapter is
    switched off; the caller keeps one adapter per batch. Only the server mixes, so a caller that decodes one model
    (evaluation, on-policy sampling) cannot get the base model's answers by leaving its rows' adapter unnamed.
    """

    def __init__(self, model: Any, pad_id: int, mixed: bool = False) -> None:
        self.model = model
        self.pad_id = pad_id
        self.rows: list[Row] = []
        self.mixed = mixed
        self._cache: Any = None
        self.device = next(model.parameters()).device
        self._mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        self._next_logits = torch.zeros(0, 0, device=self.device)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: Sequence[Row]) -> None:
        """Pre-fill `rows` and merge them into the batch; their first token is ready for `step`.

        Rows of similar length are pre-filled together, others apart: pre-filling is compute-bound, and padding a
        40-token prompt to the length of a 400-token one in the same forward pass would multiply its cost. A row
        that echoes its prompt's log-probabilities is pre-filled alone: it needs the logits of every position, and
        those of one long prompt already take prompt length x vocabulary x 4 bytes.
        """
        for group in _similar_lengths([r for r in rows if not r.echo]) + [[r] for r in rows if r.echo]:
            self._add_group(group)

    def _add_group(self, rows: Sequence[Row]) -> None:
        for row in rows:
            if row.sampling.temperature > 0:
                row.generator = torch.Generator(self.device).manual_seed(
                    row.sampling.seed if row.sampling.seed is not None else torch.seed()
                )
        # Rows with the same prompt and adapter (k samples of one prompt) are pre-filled once, then copied.
        unique: dict[tuple[tuple[int, ...], str], int] = {}
        copy_of = [unique.setdefault((tuple(r.prompt), r.adapter), len(unique)) for r in rows]
        firsts = [rows[copy_of.index(i)] for i in range(len(unique))]
        width = max(len(r.prompt) for r in firsts)
        ids = torch.tensor(
            [[self.pad_id] * (width - len(r.prompt)) + r.prompt for r in firsts], device=self.device
        )
        mask = torch.tensor(
            [[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in firsts], device=self.device
        )
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        echo = any(r.echo for r in rows)  # an echoed row comes alone (see `add`)
        logits = self._forward(ids, mask, cache, [r.adapter for r in firsts], every_position=echo)
        if echo:
            for row, row_logits in zip(rows, logits, strict=True):
                scores = row_logits[width - len(row.prompt) : -1].log_softmax(-1)
                row.prompt_logprobs = _logprobs(scores, row.prompt[1:], row.logprobs or 0)
            logits = logits[:, -1]
        if len(firsts) < len(rows):
            index = torch.tensor(copy_of, device=self.device)
            cache.batch_select_indices(index)
            mask, logits = mask[index], logits[index]
        if self.rows:
            self._cache, self._mask = _merge(self._cache, self._mask, cache, mask)
            self._next_logits = torch.cat([self._next_logits, logits])
        else:
            self._cache, self._mask, self._next_logits = cache, mask, logits
        self.rows.extend(rows)

    def step(self) -> list[int]:
        """Choose the next token of every row, append it, and run the model once to ready the following one."""
        chosen = [_pick(self._next_logits[i], row) for i, row in enumerate(self.rows)]
        recorded = [i for i, row in enumerate(self.rows) if row.logprobs is not None]
        if recorded:
            scores = self._next_logits[torch.tensor(recorded, device=self.device)].log_softmax(-1)
            for j, i in enumerate(recorded):
                row = self.rows[i]
                row.token_logprobs += _logprobs(scores[j : j + 1], [chosen[i]], row.logprobs or 0)
        for row, token in zip(self.rows, chosen, strict=True):
            row.tokens.append(token)
        self._mask = torch.cat(
            [self._mask, torch.ones(len(self.rows), 1, dtype=torch.long, device=self.device)], dim=1
        )
        ids = torch.tensor(chosen, device=self.device).unsqueeze(1)
        self._next_logits = self._forward(ids, self._mask, self._cache, [r.adapter for r in self.rows])
        return chosen

    def remove(self, indices: Sequence[int]) -> list[Row]:
        """Drop the rows at `indices` (finished or cancelled) and return them; trims padding no row needs."""
        if not indices:
            return []
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        removed = [self.rows[i] for i in sorted(gone)]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache, self._mask, self._next_logits = None, self._mask[:0, :0], self._next_logits[:0]
            return removed
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        self._next_logits = self._next_logits[index]
        first = int(self._mask.any(dim=0).long().argmax())  # leading columns that are padding in every row
        if first > 0:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
        return removed

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        cache: Any,
        adapters: list[str],
        every_position: bool = False,
    ) -> torch.Tensor:
        """The next-token logits after the last position of each row, or after every position."""
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        extra = {"adapter_names": adapters} if self.mixed and hasattr(self.model, "peft_config") else {}
        with torch.no_grad():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=0 if every_position else 1,
                **extra,
            )
        return out.logits.float() if every_position else out.logits[:, -1].float()


def _similar_lengths(rows: Sequence[Row], waste: float = 0.2) -> list[list[Row]]:
    """Rows grouped by prompt length so that padding adds at most `waste` to a group's tokens."""
    groups: list[list[Row]] = []
    for row in sorted(rows, key=lambda r: len(r.prompt)):
        group = groups[-1] if groups else None
        if group and len(row.prompt) * (len(group) + 1) <= (1 + waste) * (
            sum(len(r.prompt) for r in group) + len(row.prompt)
        ):
            group.append(row)
        else:
            groups.append([row])
    return groups


def _merge(
    cache_a: Any, mask_a: torch.Tensor, cache_b: Any, mask_b: torch.Tensor
) -> tuple[Any, torch.Tensor]:
    """Stack two caches along the batch, left-padding the shorter one (its padding is masked out).

    Keys are cached after rotary embedding, so a row's attention does not depend on where its padding ends.
    """
    length = max(mask_a.shape[1], mask_b.shape[1])

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
        missing = length - t.shape[dim]
        if missing == 0:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    for layer_a, layer_b in zip(cache_a.layers, cache_b.layers, strict=True):
        layer_a.keys = torch.cat([pad(layer_a.keys, 2), pad(layer_b.keys, 2)])
        layer_a.values = torch.cat([pad(layer_a.values, 2), pad(layer_b.values, 2)])
    return cache_a, torch.cat([pad(mask_a, 1), pad(mask_b, 1)])


def _logprobs(scores: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """Each token's entry in its position's log-probabilities (`scores`, one row per token), with the `top` most
    likely tokens there; all positions at once (a prompt of thousands of tokens is echoed)."""
    chosen = scores.gather(1, torch.tensor(tokens, dtype=torch.long, device=scores.device)[:, None])[
        :, 0
    ].tolist()
    if not top:
        return [TokenLogprob(t, lp, []) for t, lp in zip(tokens, chosen, strict=True)]
    best = scores.topk(top, dim=-1)
    return [
        TokenLogprob(t, lp, list(zip(ids, values, strict=True)))
        for t, lp, ids, values in zip(
            tokens, chosen, best.indices.tolist(), best.values.tolist(), strict=True
        )
    ]


def _pick(logits: torch.Tensor, row: Row) -> int:
    """Greedy, or temperature and nucleus (top-p) sampling with the row's own random generator."""
    s = row.sampling
    if s.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs > s.top_p  # keep the smallest set reaching top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=row.generator))


def sample_batch(
    model: Any,
    prompts: Sequence[list[int]],
    sampling: Sequence[Sampling],
    stop: set[int],
    pad_id: int,
    batch_size: int = 16,
) -> list[Row]:
    """Sample one continuation of each prompt (token ids) with its own `Sampling`, recording log-probabilities.

    The model's active adapter serves every row (the weights being trained, not a named adapter). A row ends at a
    `stop` token (kept, as the last of its tokens) or at its `max_tokens`. Returns the rows in prompt order, each
    with `tokens` and `token_logprobs` (of each token under the model at temperature 1, as it was when sampled).
    """
    queue = [
        Row(list(p), s, tag=i, logprobs=0) for i, (p, s) in enumerate(zip(prompts, sampling, strict=True))
    ]
    queue.reverse()
    done: list[Row | None] = [None] * len(prompts)
    batch = DecodeBatch(model, pad_id)
    while queue or batch.rows:
        batch.add([queue.pop() for _ in range(min(batch_size - len(batch), len(queue)))])
        batch.step()
        finished = [
            i
            for i, r in enumerate(batch.rows)
            if r.tokens[-1] in stop or len(r.tokens) >= r.sampling.max_tokens
        ]
        for row in batch.remove(finished):
            done[row.tag] = row
    return [row for row in done if row is not None]


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int | Sequence[int],
    batch_size: int = 16,
    progress: Any = None,
) -> list[str]:
    """Greedy answers of `model` as it is (its active adapter, or none where it is switched off) to `prompts`
    (rendered chat prompts), each up to its end-of-turn token.

    `max_new_tokens` is one budget for all or one per prompt. Keeps `batch_size` rows decoding: a finished row's
    place goes to the next prompt at once, so short answers never wait for long ones. `progress`, if given, is
    called with the number of answers just finished.
    """
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    stop = {tokenizer.eos_token_id}
    queue = [
        Row(tokenizer(p, add_special_tokens=False)["input_ids"], Sampling(b), tag=i)
        for i, (p, b) in enumerate(zip(prompts, budgets, strict=True))
    ]
    queue.reverse()
    answers: list[str] = [""] * len(prompts)
    batch = DecodeBatch(model, tokenizer.pad_token_id)
    while queue or batch.rows:
        batch.add([queue.pop() for _ in range(min(batch_size - len(batch), len(queue)))])
        batch.step()
        done = [
            i
            for i, r in enumerate(batch.rows)
            if r.tokens[-1] in stop or len(r.tokens) >= r.sampling.max_tokens
        ]
        for row in batch.remove(done):
            answers[row.tag] = tokenizer.decode(row.tokens, skip_special_tokens=True).strip()
        if progress is not None and done:
            progress(len(done))
    return answers
