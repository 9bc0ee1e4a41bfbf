"""ORPO, KTO and the reward model: each loss against a direct computation on a tiny batch, and each one learning
the toy preference of `test_dpo.py` (polite over rude); DPO's reference, scored when a pair is first batched."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import write_jsonl
from test_dpo import pair_rows, prepared

from specialize.config import KtoConfig, TrainConfig
from specialize.data.template import IGNORE
from specialize.models import load_model
from specialize.train import train
from specialize.train.kto import KtoObjective
from specialize.train.loop import _prepare_model
from specialize.train.orpo import OrpoObjective
from specialize.train.preference import PreferenceObjective, answer_only
from specialize.train.reward_model import RewardModelObjective, load_reward_model, pair_figures


def policy(tiny_model_dir, scalar_head: bool = False):
    """The tiny model under a LoRA adapter whose B matrices are random, so that policy and base differ."""
    model, tokenizer = load_model(tiny_model_dir, scalar_head=scalar_head)
    model = _prepare_model(model, TrainConfig(), scalar_head)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "score" in name:
                p.normal_(0, 0.3)
    return model.eval(), tokenizer


def direct_logps(model, ids: list[int], labels: list[int]) -> list[float]:
    """Each target token's log-probability, from one plain forward pass of the sequence alone."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return [float(logp[t, labels[t + 1]]) for t in range(len(ids) - 1) if labels[t + 1] != IGNORE]


def rated_rows(n: int, start: int = 0) -> list[dict]:
    """Answers rated good (polite) or bad (rude), alternating, as prepared feedback rows."""
    rows = []
    for row in prepared(pair_rows(n, start)):
        good = len(rows) % 2 == 0
        answer = row["chosen"] if good else row["rejected"]
        rows.append(
            {
                "messages": row["prompt"] + answer,
                "prompt": row["prompt"],
                "completion": answer,
                "desirable": good,
                "source": row["source"],
            }
        )
    return rows


def test_orpo_loss_equals_a_direct_computation(tiny_model_dir):
    model, tokenizer = policy(tiny_model_dir)
    rows = prepared(pair_rows(3))
    rows[1]["chosen"] = [{"role": "assistant", "content": "A longer answer, to vary the lengths a bit."}]
    objective = OrpoObjective(0.3, tokenizer.pad_token_id, 4)
    with torch.no_grad():
        got = objective.loss(model, objective.collate(objective.encode(model, tokenizer, rows)))
    expected = 0.0
    for row in rows:
        c, r = (
            sum(lp) / len(lp)
            for lp in (
                direct_logps(model, *vars(answer_only(tokenizer, row["prompt"], row[key])).values())
                for key in ("chosen", "rejected")
            )
        )
        log_odds = (c - r) - (math.log1p(-math.exp(c)) - math.log1p(-math.exp(r)))
        expected += -c - 0.3 * F.logsigmoid(torch.tensor(log_odds)).item()
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_kto_loss_equals_a_direct_computation(tiny_model_dir):
    model, tokenizer = policy(tiny_model_dir)
    rows = rated_rows(3)
    settings = KtoConfig(beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)
    objective = KtoObjective(settings, tokenizer.pad_token_id, 4, model)
    with torch.no_grad():
        got = objective.loss(model, objective.collate(objective.encode(model, tokenizer, rows)))

    def logp(prompt, answer, base: bool) -> float:
        encoded = answer_only(tokenizer, prompt, answer)
        if base:
            with model.disable_adapter():
                return sum(direct_logps(model, encoded.input_ids, encoded.labels))
        return sum(direct_logps(model, encoded.input_ids, encoded.labels))

    # z: the policy's log-ratio to the base over mismatched pairs (each prompt with the next row's answer)
    shifted = [(rows[i]["prompt"], rows[(i + 1) % 3]["completion"]) for i in range(3)]
    z = max(0.0, sum(logp(p, a, False) - logp(p, a, True) for p, a in shifted) / 3)
    expected = 0.0
    for row in rows:
        r = logp(row["prompt"], row["completion"], False) - logp(row["prompt"], row["completion"], True)
        if row["desirable"]:
            expected += 1.0 * (1 - torch.sigmoid(torch.tensor(0.5 * (r - z))).item())
        else:
            expected += 1.5 * (1 - torch.sigmoid(torch.tensor(0.5 * (z - r))).item())
    assert float(got) == pytest.approx(expected, rel=1e-4)


def test_dpo_scores_a_pairs_reference_once_the_first_time_it_is_batched(tiny_model_dir):
    model, tokenizer = policy(tiny_model_dir)
    objective = PreferenceObjective(0.1, tokenizer.pad_token_id, 4, model)
    pairs = objective.encode(model, tokenizer, prepared(pair_rows(6)))
    assert all(p.reference is None for p in pairs)  # no pass over the whole set before the first step
    batch = objective.collate(pairs[:2])
    assert [p.reference is not None for p in pairs] == [True, True, False, False, False, False]
    with model.disable_adapter():  # the reference is the base model, the adapter switched off
        base = [
            sum(direct_logps(model, e.input_ids, e.labels)) for p in pairs[:2] for e in (p.chosen, p.rejected)
        ]
    assert [x for p in pairs[:2] for x in p.reference] == pytest.approx(base, rel=1e-4)
    assert batch["reference"].tolist() == pytest.approx([base[0], base[2], base[1], base[3]], rel=1e-4)

    with torch.no_grad():  # a changed base would change a recomputed reference: the first scores are kept
        model.get_input_embeddings().weight.mul_(2)
    again = objective.collate(pairs[:3])
    assert again["reference"][[0, 1, 3, 4]].tolist() == batch["reference"].tolist()
    assert pairs[2].reference is not None


def test_reward_model_scores_equal_transformers_own_head(tiny_model_dir):
    model, tokenizer = policy(tiny_model_dir, scalar_head=True)
    rows = prepared(pair_rows(3))
    objective = RewardModelObjective(tokenizer.pad_token_id, 4)
    pairs = objective.encode(model, tokenizer, rows)
    batch = objective.collate(pairs)
    assert int(batch["shared_prefix"]) > 0  # the prompt's common start runs once
    from specialize.train.reward_model import ranking_loss, sequence_scores

    with torch.no_grad():
        scores = sequence_scores(model, batch)
        direct = [
            float(model(input_ids=torch.tensor([e.input_ids])).logits[0, 0])
            for e in [p.chosen for p in pairs] + [p.rejected for p in pairs]
        ]
        loss = ranking_loss(model, batch)[0]
    torch.testing.assert_close(scores, torch.tensor(direct), rtol=1e-4, atol=1e-4)
    expected = sum(-F.logsigmoid(torch.tensor(direct[i] - direct[3 + i])).item() for i in range(3))
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_orpo_learns_the_preference_without_a_reference(tmp_path, tiny_model_dir):
    train_file = write_jsonl(tmp_path / "train.jsonl", prepared(pair_rows(32)))
    val_file = write_jsonl(tmp_path / "validation.jsonl", prepared(pair_rows(8, start=100)))
    config = TrainConfig(
        method="orpo", adapter=None, max_steps=16, batch_size=4, learning_rate=1e-3, log_every=1
    )
    result = train(config, tiny_model_dir, train_file, val_file, tmp_path / "orpo", progress=False)
    logged = [json.loads(line) for line in (tmp_path / "orpo" / "metrics.jsonl").read_text().splitlines()]
    assert result.validation_loss < logged[0]["loss"] and math.isfinite(result.validation_loss)


def test_kto_starts_at_one_half_and_learns_from_rated_answers(tmp_path, tiny_model_dir):
    train_file = write_jsonl(tmp_path / "train.jsonl", rated_rows(32))
    val_file = write_jsonl(tmp_path / "validation.jsonl", rated_rows(8, start=100))
    kwargs = {"method": "kto", "batch_size": 4, "kto": {"beta": 0.5}}
    untrained = train(
        TrainConfig(max_steps=1, learning_rate=1e-9, **kwargs),
        tiny_model_dir,
        train_file,
        val_file,
        tmp_path / "untrained",
        progress=False,
    )
    # LoRA starts as a no-op: every implicit reward and the KL estimate are 0, each answer's loss 1 - sigmoid(0)
    assert untrained.validation_loss == pytest.approx(0.5, abs=1e-4)
    trained = train(
        TrainConfig(max_steps=24, learning_rate=5e-3, **kwargs),
        tiny_model_dir,
        train_file,
        val_file,
        tmp_path / "trained",
        progress=False,
    )
    assert trained.validation_loss < 0.45


def test_a_reward_model_learns_to_rank_held_out_pairs(tmp_path, tiny_model_dir):
    train_file = write_jsonl(tmp_path / "train.jsonl", prepared(pair_rows(32)))
    val_file = write_jsonl(tmp_path / "validation.jsonl", prepared(pair_rows(8, start=100)))
    config = TrainConfig(method="reward", max_steps=16, batch_size=4, learning_rate=5e-3)
    result = train(config, tiny_model_dir, train_file, val_file, tmp_path / "rm", progress=False)
    assert result.validation_loss < 0.2 * math.log(2)

    model, tokenizer = load_reward_model(
        tiny_model_dir, result.output_dir
    )  # as a `reward: {type: model}` loads it
    objective = RewardModelObjective(tokenizer.pad_token_id, 4)
    pairs = objective.encode(model, tokenizer, prepared(pair_rows(8, start=100)))
    loss, accuracy = pair_figures(model, objective, pairs)
    assert accuracy == 1.0 and loss == pytest.approx(result.validation_loss, rel=1e-4)
