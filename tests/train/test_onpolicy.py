"""Online DPO and GRPO: advantages, GRPO's loss against a direct computation, sampled log-probabilities equal to
the training pass's, learning a verifiable task, and a run killed with SIGKILL resuming to the same weights."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import chat_row, write_jsonl
from safetensors.torch import load_file

from specialize.config import FunctionReward, TrainConfig
from specialize.data import read_prepared
from specialize.models import load_model
from specialize.train import train
from specialize.train.loop import _prepare_model
from specialize.train.objective import objective_for
from specialize.train.onpolicy import group_advantages, grpo_loss, token_logps
from specialize.train.rewards import build_reward

HERE = Path(__file__).parent
# An adapter on the output layer too: a random tiny model's logits are nearly flat, and only the output layer
# moves them far in a few steps (LoRA on the blocks alone does, but slowly).
HEAD = {"target_modules": ["q_proj", "v_proj", "lm_head"]}


def prompt_rows(n: int, start: int = 0) -> list[dict]:
    return [
        chat_row(f"Say something about case {i}.", "alpha", source=f"prompts.jsonl:{i + 1}")
        for i in range(start, start + n)
    ]


@pytest.fixture
def prompts(tmp_path):
    return (
        write_jsonl(tmp_path / "train.jsonl", prompt_rows(16)),
        write_jsonl(tmp_path / "validation.jsonl", prompt_rows(4, start=100)),
    )


def reward(name: str):
    return build_reward(FunctionReward(type="function", function=f"toy_rewards:{name}"))


def test_advantages_are_normalised_within_the_group():
    advantages = group_advantages([1.0, 0.0, 0.0, 1.0, 1.0])
    assert statistics.fmean(advantages) == pytest.approx(0, abs=1e-9)
    assert statistics.stdev(advantages) == pytest.approx(1, abs=1e-3)
    assert all(a > 0 for a, r in zip(advantages, [1, 0, 0, 1, 1], strict=True) if r == 1)
    assert group_advantages([0.5, 0.5, 0.5]) == [0.0, 0.0, 0.0]  # a group that ties teaches nothing


def test_grpo_loss_equals_a_direct_computation():
    torch.manual_seed(0)
    lengths = [3, 1, 4]
    rows = torch.tensor([i for i, n in enumerate(lengths) for _ in range(n)])
    logp = (torch.rand(len(rows)) * -3).requires_grad_()
    old = logp.detach() + torch.randn(len(rows)) * 0.5  # ratios well outside 1 +- clip, so the clip acts
    reference = logp.detach() + torch.randn(len(rows)) * 0.3
    advantages = torch.tensor([1.5, -0.7, 0.4])
    clip, kl = 0.2, 0.05

    got = grpo_loss(logp, old, rows, advantages, clip, kl, reference)

    expected, start = 0.0, 0
    for i, n in enumerate(lengths):
        total = 0.0
        for t in range(start, start + n):
            ratio = float(torch.exp(logp[t] - old[t]))
            a = float(advantages[i])
            surrogate = min(ratio * a, min(max(ratio, 1 - clip), 1 + clip) * a)
            delta = float(reference[t] - logp[t])
            total += -surrogate + kl * (torch.exp(torch.tensor(delta)).item() - delta - 1)
        expected += total / n
        start += n
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_grpo_gradient_raises_good_answers_and_lowers_bad_ones():
    rows = torch.tensor([0, 0, 1, 1, 1])
    logp = torch.full((5,), -1.0, requires_grad=True)
    grpo_loss(logp, logp.detach(), rows, torch.tensor([1.0, -2.0]), 0.2, 0.0, None).backward()
    # Descending the loss moves log-probabilities against the gradient: up for a positive advantage, down for a
    # negative one, by advantage / answer length.
    assert torch.allclose(logp.grad, torch.tensor([-0.5, -0.5, 2 / 3, 2 / 3, 2 / 3]))


def test_sampled_log_probabilities_are_the_training_pass_ones(tiny_model_dir, prompts):
    config = TrainConfig(method="grpo", onpolicy={"k": 3, "max_new_tokens": 6})
    model, tokenizer = load_model(tiny_model_dir)
    model = _prepare_model(model, config)
    objective = objective_for(config, tokenizer.pad_token_id, reward("vowels"))
    examples = objective.encode(model, tokenizer, read_prepared(prompts[0]))
    samples = [s for group in objective.sample(model, examples[:4]) for s in group]
    assert len(samples) == 12 and all(1 <= len(s.tokens) <= 6 for s in samples)
    from specialize.train.batching import collate

    with torch.no_grad():
        logp, rows = token_logps(model, collate([s.encoded() for s in samples], tokenizer.pad_token_id))
    recorded = torch.tensor([lp for s in samples for lp in s.logprobs])
    # The ratio of GRPO starts at 1: the decoder's record of each token is what the packed training pass computes.
    torch.testing.assert_close(logp, recorded, atol=1e-4, rtol=1e-4)
    assert rows.tolist() == [i for i, s in enumerate(samples) for _ in s.tokens]


@pytest.mark.parametrize("method", ["grpo", "online_dpo"])
def test_on_policy_training_raises_the_reward_of_a_verifiable_task(tmp_path, tiny_model_dir, prompts, method):
    config = TrainConfig(
        method=method,
        max_steps=24,
        batch_size=4,
        learning_rate=2e-2,
        warmup_ratio=0,
        log_every=1,
        lora=HEAD,
        onpolicy={"k": 8, "max_new_tokens": 1},
    )
    train(config, tiny_model_dir, *prompts, tmp_path / "out", progress=False, reward=reward("first_half"))

    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    by_step: dict[int, list[dict]] = {}
    for s in samples:
        by_step.setdefault(s["step"], []).append(s)
    assert sorted(by_step) == list(range(1, 25)) and all(len(v) == 4 * 8 for v in by_step.values())
    means = [statistics.fmean(s["reward"] for s in by_step[step]) for step in sorted(by_step)]
    assert statistics.fmean(means[-5:]) > statistics.fmean(means[:5]) + 0.3, means
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward"] for m in metrics] == pytest.approx(means)
    for step, rows in by_step.items():
        groups: dict[str, list[dict]] = {}
        for s in rows:
            groups.setdefault(s["source"], []).append(s)
        for group in groups.values():
            rewards = [s["reward"] for s in group]
            if method == "grpo":
                assert [s["advantage"] for s in group] == pytest.approx(group_advantages(rewards)), step
                continue
            pair = {s["pair"]: s["reward"] for s in group if s["pair"]}
            if max(rewards) == min(rewards):
                assert not pair
            else:
                assert pair == {"chosen": max(rewards), "rejected": min(rewards)}


STEPS = 30
CHILD = """
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from specialize.config import FunctionReward, TrainConfig
from specialize.train import train
from specialize.train.rewards import build_reward
config = TrainConfig.model_validate_json(sys.argv[1])
reward = build_reward(FunctionReward(type="function", function="toy_rewards:vowels"))
train(config, *map(Path, sys.argv[2:6]), seed=0, progress=False, reward=reward)
"""


def test_grpo_killed_with_sigkill_resumes_to_the_same_weights_and_samples(tmp_path, tiny_model_dir, prompts):
    config = TrainConfig(
        method="grpo",
        max_steps=STEPS,
        batch_size=4,
        learning_rate=1e-2,
        checkpoints={"every": 2, "keep": 2},
        onpolicy={"k": 4, "max_new_tokens": 4, "kl": 0.05},
    )
    files = (str(tiny_model_dir), str(prompts[0]), str(prompts[1]))
    reference = train(
        config, *map(Path, files), tmp_path / "uninterrupted", seed=0, progress=False, reward=reward("vowels")
    )

    out = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, config.model_dump_json(), *files, str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])},
    )
    deadline = time.monotonic() + 120
    while (
        not any((out / "checkpoints").glob("step-*")) and child.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, "the child finished before it could be killed"
    assert not (out / "adapter").exists()

    resumed = train(
        config, *map(Path, files), out, seed=0, progress=False, resume=True, reward=reward("vowels")
    )

    assert resumed.steps == reference.steps == STEPS
    expected = load_file(reference.output_dir / "adapter_model.safetensors")
    got = load_file(resumed.output_dir / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    # The same answers were sampled, scored and logged, the steps before the kill exactly once.
    assert (out / "samples.jsonl").read_text() == (tmp_path / "uninterrupted" / "samples.jsonl").read_text()
