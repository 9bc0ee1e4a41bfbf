"""On-policy preference tuning: online DPO and GRPO learn from the model's own samples, scored by a reward.

A training batch is a batch of prompts. Inside `loss`, the model being trained samples `train.onpolicy.k` answers
to each prompt through the project's batched KV-cache decoder (`models.generation.sample_batch`; temperature,
top-p and `max_new_tokens` from `train.onpolicy`), the `reward:` scores them (`rewards.score_answers`), and:

- **online DPO** (Guo et al., 2024): the best and the worst of a prompt's answers become a pair, trained with the
  DPO loss against the base model (the adapter switched off) as reference. A prompt whose answers all score the
  same teaches nothing and adds nothing to the loss.
- **GRPO** (Shao et al., 2024): each answer's advantage is its reward minus its group's mean, over the group's
  standard deviation. The loss of a token is PPO's clipped surrogate -min(ρA, clip(ρ, 1-ε, 1+ε)A), ρ being the
  token's probability now over its probability when it was sampled (recorded by the decoder), plus, when
  `train.onpolicy.kl` > 0, that weight times the k3 estimate of the KL divergence to the base model; averaged
  over each answer's tokens (the paper's normalisation) and summed over answers. There is one update per batch
  of samples (TRL's default, num_iterations=1), so ρ departs from 1 only by what differs between the sampling
  pass and the training pass (dropout, autocast precision), which the clip bounds. Answers with no advantage and
  no KL term have no gradient and are not run through the model at all.

The loop is the one every method uses (accumulation, schedule, checkpoints, resume, early stopping): the count
a batch's summed loss is normalised by is known before sampling (prompts for online DPO, prompts x k answers for
GRPO). Sampling seeds come from torch's global generator, whose state every checkpoint saves and restores, so a
resumed run samples exactly what the uninterrupted one did. Each sample with its reward and its advantage (GRPO)
or its place in the pair (online DPO) goes to `train/samples.jsonl` with its step, through `drain`.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from specialize.config import OnPolicyConfig
from specialize.data.template import IGNORE, Encoded, render_prompt
from specialize.errors import DataError
from specialize.train.batching import collate, target_losses
from specialize.train.objective import StepRecord
from specialize.train.rewards import Reward, Scored, prompt_of, score_answers

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Prompt:
    """A prompt to sample answers to: its token ids (generation cue included), messages and prepared row."""

    key: int  # its place in the objective's table, which a collated batch refers to
    ids: list[int]
    messages: list[dict[str, str]]
    row: dict[str, Any]


@dataclass
class Sample:
    """One sampled answer: its tokens (the stop token included), their log-probabilities when sampled, its text
    and its reward."""

    prompt: Prompt
    tokens: list[int]
    logprobs: list[float]
    text: str
    reward: float = 0.0

    def encoded(self) -> Encoded:
        """The prompt and the answer as one sequence, with targets on the answer alone."""
        return Encoded(self.prompt.ids + self.tokens, [IGNORE] * len(self.prompt.ids) + self.tokens)


class _OnPolicy:
    """What online DPO and GRPO share: prompts as examples, sampling and scoring, records and validation."""

    per_prompt = 1  # what one prompt adds to the count a batch's loss is normalised by

    def __init__(self, settings: OnPolicyConfig, reward: Reward, pad_id: int, batch_size: int) -> None:
        self.settings, self.reward, self.pad_id, self.batch_size = settings, reward, pad_id, batch_size
        self.prompts: list[Prompt] = []
        self.tokenizer: Any = None
        self._samples: list[dict[str, Any]] = []
        self._rewards: list[float] = []
        self._sampled_tokens = 0
        self._sampling_seconds = 0.0

    def encode(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[Prompt]:
        self.tokenizer = tokenizer
        self.reward.check(rows)
        out = []
        for row in rows:
            messages = prompt_of(row)
            if not messages:
                raise DataError(f"{row.get('source', 'a row')}: no prompt to sample answers to")
            ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
            out.append(Prompt(len(self.prompts), ids, messages, row))
            self.prompts.append(out[-1])
        return out

    def length(self, example: Prompt) -> int:
        # A prompt becomes k sequences of up to prompt + max_new_tokens tokens: what the memory check must see.
        # The same factor for every prompt keeps length-grouped batches as they would be without it.
        return (len(example.ids) + self.settings.max_new_tokens) * self.settings.k

    def collate(self, examples: list[Prompt]) -> Batch:
        batch = collate([Encoded(p.ids, [IGNORE] * len(p.ids)) for p in examples], self.pad_id)
        batch["prompts"] = torch.tensor([p.key for p in examples])
        return batch

    def count(self, batch: Batch) -> int:
        return len(batch["prompts"]) * self.per_prompt

    def drain(self) -> StepRecord:
        figures = {}
        if self._rewards:
            figures = {
                "reward": statistics.fmean(self._rewards),
                "sampled_tokens": float(self._sampled_tokens),
                "sampled_tokens_per_second": self._sampled_tokens / max(self._sampling_seconds, 1e-9),
            }
        record = StepRecord(figures, self._samples)
        self._samples, self._rewards, self._sampled_tokens, self._sampling_seconds = [], [], 0, 0.0
        return record

    def validation(self, model: Any, examples: list[Prompt]) -> float:
        """Minus the mean reward of the greedy answers to the validation prompts: lower is better."""
        rewards = [s.reward for group in self.sample(model, examples, greedy=True) for s in group]
        return -statistics.fmean(rewards) if rewards else 0.0

    def sample(self, model: Any, prompts: list[Prompt], greedy: bool = False) -> list[list[Sample]]:
        """k scored answers to each prompt (one greedy answer with `greedy`), grouped by prompt."""
        from specialize.models.generation import Sampling, sample_batch

        s = self.settings
        k = 1 if greedy else s.k
        # Seeds from torch's global generator: checkpoints restore it, so a resumed run samples the same answers.
        # Greedy decoding draws none, so validation does not shift the training samples.
        seeds = (
            [None] * (len(prompts) * k) if greedy else torch.randint(0, 2**62, (len(prompts) * k,)).tolist()
        )
        sampling = [
            Sampling(s.max_new_tokens, 0.0 if greedy else s.temperature, s.top_p, seed) for seed in seeds
        ]
        was_training = model.training
        model.eval()
        started = time.perf_counter()
        rows = sample_batch(
            model,
            [p.ids for p in prompts for _ in range(k)],
            sampling,
            {self.tokenizer.eos_token_id},
            self.pad_id,
            batch_size=len(sampling),
        )
        model.train(was_training)
        texts = self.tokenizer.batch_decode([r.tokens for r in rows], skip_special_tokens=True)
        samples = [
            Sample(prompts[i // k], r.tokens, [t.logprob for t in r.token_logprobs], text.strip())
            for i, (r, text) in enumerate(zip(rows, texts, strict=True))
        ]
        rewards = score_answers(
            self.reward, [Scored(x.prompt.messages, x.text, x.prompt.row) for x in samples]
        )
        for x, r in zip(samples, rewards, strict=True):
            x.reward = r
        if not greedy:
            self._sampled_tokens += sum(len(x.tokens) for x in samples)
            self._sampling_seconds += time.perf_counter() - started
            self._rewards += rewards
        return [samples[i : i + k] for i in range(0, len(samples), k)]

    def _record(self, sample: Sample, **extra: Any) -> None:
        self._samples.append(
            {
                "source": sample.prompt.row.get("source"),
                "prompt": sample.prompt.messages[-1]["content"],
                "completion": sample.text,
                "tokens": len(sample.tokens),
                "reward": sample.reward,
                **extra,
            }
        )

    @staticmethod
    def _trained_on(batch: Batch, trained: Batch) -> None:
        """Put the sequences trained on into `batch`, where the loop counts the tokens trained."""
        batch.update({k: trained[k] for k in ("input_ids", "attention_mask", "shared_prefix")})

    @classmethod
    def _nothing_learnt(cls, batch: Batch) -> torch.Tensor:
        """The loss of a batch whose samples teach nothing: zero, with no gradient reaching the weights."""
        empty = torch.zeros(0, 0, dtype=torch.long)
        cls._trained_on(
            batch, {"input_ids": empty, "attention_mask": empty, "shared_prefix": torch.tensor(0)}
        )
        return torch.zeros((), requires_grad=True)


class OnlineDpoObjective(_OnPolicy):
    """Online DPO: the best against the worst of k samples per prompt, with the DPO loss: an `Objective[Prompt]`."""

    def __init__(
        self, settings: OnPolicyConfig, beta: float, reward: Reward, pad_id: int, batch_size: int
    ) -> None:
        super().__init__(settings, reward, pad_id, batch_size)
        self.beta = beta

    def encode(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[Prompt]:
        if not hasattr(model, "disable_adapter"):
            raise DataError(
                "train.method online_dpo takes its reference model from the base under the adapter; set "
                "train.adapter to lora or dora"
            )
        return super().encode(model, tokenizer, rows)

    def loss(self, model: Any, batch: Batch) -> torch.Tensor:
        from specialize.train.preference import Pair, collate_pairs, dpo_loss, with_reference

        pairs = []
        for group in self.sample(model, [self.prompts[int(i)] for i in batch["prompts"]]):
            best = max(group, key=lambda x: x.reward)
            worst = min(group, key=lambda x: x.reward)
            tied = best.reward == worst.reward
            for x in group:
                self._record(
                    x, pair=None if tied else "chosen" if x is best else "rejected" if x is worst else None
                )
            if not tied:
                pairs.append(Pair(best.encoded(), worst.encoded()))
        if not pairs:
            return self._nothing_learnt(batch)
        pairs = with_reference(model, pairs, self.pad_id, self.batch_size)
        trained = collate_pairs(pairs, self.pad_id)
        self._trained_on(batch, trained)
        return dpo_loss(model, trained, self.beta)[0]


class GrpoObjective(_OnPolicy):
    """GRPO: group-normalised advantages and PPO's clipped surrogate over k samples per prompt."""

    def __init__(self, settings: OnPolicyConfig, reward: Reward, pad_id: int, batch_size: int) -> None:
        super().__init__(settings, reward, pad_id, batch_size)
        self.per_prompt = settings.k

    def encode(self, model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[Prompt]:
        if self.settings.kl > 0 and not hasattr(model, "disable_adapter"):
            raise DataError(
                "train.onpolicy.kl takes GRPO's reference model from the base under the adapter; set "
                "train.adapter to lora or dora, or train.onpolicy.kl to 0"
            )
        return super().encode(model, tokenizer, rows)

    def loss(self, model: Any, batch: Batch) -> torch.Tensor:
        trained: list[tuple[Sample, float]] = []
        for group in self.sample(model, [self.prompts[int(i)] for i in batch["prompts"]]):
            for x, advantage in zip(group, group_advantages([x.reward for x in group]), strict=True):
                self._record(x, advantage=advantage)
                if advantage != 0 or self.settings.kl > 0:
                    trained.append((x, advantage))
        if not trained:
            return self._nothing_learnt(batch)
        sequences = collate([x.encoded() for x, _ in trained], self.pad_id)
        self._trained_on(batch, sequences)
        old = [lp for x, _ in trained for lp in x.logprobs]
        reference = self._reference(model, sequences) if self.settings.kl > 0 else None
        logp, rows = token_logps(model, sequences)
        return grpo_loss(
            logp,
            torch.tensor(old, device=logp.device),
            rows,
            torch.tensor([a for _, a in trained], device=logp.device),
            self.settings.clip,
            self.settings.kl,
            reference,
        )

    @staticmethod
    def _reference(model: Any, sequences: Batch) -> torch.Tensor:
        from specialize.train.preference import base_model

        with base_model(model):
            reference, _ = token_logps(model, sequences)
        return reference


def group_advantages(rewards: list[float]) -> list[float]:
    """Each reward minus the group's mean, over the group's standard deviation (0 for all when they are equal).

    The standard deviation is the sample one (n - 1), as TRL's; 1e-4 keeps a group of nearly equal rewards from
    blowing its differences up.
    """
    if len(rewards) < 2 or max(rewards) == min(rewards):
        return [0.0] * len(rewards)
    mean, std = statistics.fmean(rewards), statistics.stdev(rewards)
    return [(r - mean) / (std + 1e-4) for r in rewards]


def token_logps(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probability of every target token and its row, rows in order and each row's tokens in order."""
    losses, rows = target_losses(model, batch)
    order = torch.argsort(rows, stable=True)  # a packed pass puts rows in its own order; tokens stay in order
    return -losses[order], rows[order]


def grpo_loss(
    logp: torch.Tensor,
    old: torch.Tensor,
    rows: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    kl: float,
    reference: torch.Tensor | None,
) -> torch.Tensor:
    """GRPO's summed loss over answers: each answer's mean over its tokens of the clipped surrogate (+ KL term).

    Args:
        logp: log-probability of each answer token under the policy being trained (with gradient).
        old: the same tokens' log-probabilities when they were sampled.
        rows: each token's answer (0..n-1), tokens of an answer together.
        advantages: one per answer.
        clip: ε of the clipped ratio.
        kl: weight of the KL term; `reference` holds the base model's log-probabilities when it is > 0.
    """
    ratio = torch.exp(logp - old)
    a = advantages[rows]
    per_token = -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    if kl > 0 and reference is not None:
        delta = reference - logp
        per_token = per_token + kl * (torch.exp(delta) - delta - 1)  # k3: unbiased, never negative
    n = advantages.shape[0]
    lengths = torch.zeros(n, device=logp.device).index_add(0, rows, torch.ones_like(logp))
    return (
        torch.zeros(n, dtype=per_token.dtype, device=logp.device).index_add(0, rows, per_token) / lengths
    ).sum()
