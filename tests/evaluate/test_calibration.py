"""Label-scoring variants: each divides out what it says, and calibration removes a planted label prior."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import write_jsonl
from transformers import AutoTokenizer, PhiConfig, PhiForCausalLM

from specialize.config import EvalConfig
from specialize.evaluate import evaluate
from specialize.evaluate import scoring as scoring_module
from specialize.evaluate.calibration import LabelScores, Scoring, choose
from specialize.evaluate.scoring import label_token_ids

LABELS = ["billing", "delivery", "spam", "refund"]
QUESTIONS = [
    "I was charged twice for order",
    "where is my delivery",
    "win a free prize now",
    "please refund the invoice",
    "the parcel has not arrived",
    "cheap pills, click the link",
    "my card payment failed on bill",
    "the courier lost package",
    "you are our lucky winner",
    "money back for the broken lamp",
    "when does my order ship",
    "click here for a prize",
]
PRIOR = 6.0  # nats added to the favoured label's first token after every prompt


def test_each_variant_divides_out_what_it_says():
    scores = LabelScores(
        labels=["a", "bb"],
        rows=[0, 1],
        questions=np.array([[-1.0, -2.0], [-3.0, -2.5]]),
        lengths=np.array([1.0, 4.0]),
        content_free=np.array([[-0.5, -3.0], [-1.0, -1.5], [-2.0, -0.2]]),
        bare=np.array([-0.1, -4.0]),
    )
    free = np.exp(scores.content_free) / np.exp(scores.content_free).sum(1, keepdims=True)
    prior = free.mean(0)

    np.testing.assert_allclose(scores.adjusted(Scoring.RAW), scores.questions)
    np.testing.assert_allclose(scores.adjusted(Scoring.LENGTH), [[-1.0, -0.5], [-3.0, -0.625]])
    np.testing.assert_allclose(scores.adjusted(Scoring.CALIBRATED), scores.questions - np.log(prior))
    np.testing.assert_allclose(scores.adjusted(Scoring.PMI), [[-0.9, 2.0], [-2.9, 1.5]])
    assert scores.predictions(Scoring.RAW) == ["a", "bb"]
    assert scores.predictions(Scoring.LENGTH) == ["bb", "bb"]
    assert scores.predictions(Scoring.PMI) == ["bb", "bb"]
    assert LabelScores.from_json(json.loads(json.dumps(scores.to_json()))).predictions(
        Scoring.CALIBRATED
    ) == (scores.predictions(Scoring.CALIBRATED))


def test_best_takes_the_highest_metric_and_the_simpler_variant_on_a_tie():
    assert (
        choose({Scoring.RAW: 0.2, Scoring.LENGTH: 0.5, Scoring.CALIBRATED: 0.4, Scoring.PMI: 0.5}) == "length"
    )
    assert choose(dict.fromkeys(Scoring, 0.3)) == "raw"


def _phi(tokenizer, rows):
    """A tiny Phi model (its lm_head has a bias, where a label prior can be planted) taught the rows' labels."""
    config = PhiConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = PhiForCausalLM(config)
        _teach(model, tokenizer, rows)
    with torch.no_grad():
        model.lm_head.bias.zero_()
    return model.eval()


def _teach(model, tokenizer, rows, steps: int = 80) -> None:
    """A few full-batch steps on the label tokens, so that answers depend on the question."""
    from specialize.data import render_prompt

    pairs = []
    for row in rows:
        prompt = tokenizer(render_prompt(tokenizer, row["messages"][:-1]), add_special_tokens=False)[
            "input_ids"
        ]
        [answer] = label_token_ids(tokenizer, [row["label"]])
        pairs.append((prompt, answer))
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
    targets = torch.full((len(pairs), width), -100)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (prompt, answer) in enumerate(pairs):
        ids[i, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        targets[i, len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer)
        mask[i, : len(prompt) + len(answer)] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model_dir):
    """The same tiny model with and without a planted prior for "spam", evaluated on the same rows."""
    root = tmp_path_factory.mktemp("planted")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    first_tokens = [ids[0] for ids in label_token_ids(tokenizer, LABELS)]
    assert len(set(first_tokens)) == len(LABELS), "the labels must start with different tokens"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Label this message: {q}"},
                {"role": "assistant", "content": LABELS[i % 4]},
            ],
            "label": LABELS[i % 4],
            "source": f"v.jsonl:{i + 1}",
        }
        for i, q in enumerate(QUESTIONS)
    ]
    validation = write_jsonl(root / "validation.jsonl", rows)
    reports = {}
    calls: list[int] = []
    original = scoring_module.label_log_probs

    def counted(model, tokenizer, prompts, labels, *args, **kwargs):
        calls.append(len(prompts))
        return original(model, tokenizer, prompts, labels, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scoring_module, "label_log_probs", counted)
        model = _phi(tokenizer, rows)
        for name, token in (("plain", None), ("biased", first_tokens[LABELS.index("spam")])):
            if token is not None:  # the same model, plus a prior for "spam" after every prompt
                with torch.no_grad():
                    model.lm_head.bias[token] = PRIOR
            model.save_pretrained(root / name)
            tokenizer.save_pretrained(root / name)
            result = evaluate(
                EvalConfig(systems=["base_zero_shot", "base_few_shot"], few_shot_k=2),
                root / name,
                None,
                validation,
                validation,
                root / f"eval-{name}",
                LABELS,
                progress=False,
            )
            reports[name] = json.loads(result.report_path.read_text(encoding="utf-8"))
    return reports, calls, root


def _scores(report, system) -> LabelScores:
    [group] = report["scoring"]["label_scores"][system]
    return LabelScores.from_json(group)


def test_calibration_removes_a_planted_label_prior(planted):
    reports, _, _ = planted
    for system in ("base_zero_shot", "base_few_shot"):
        plain, biased = _scores(reports["plain"], system), _scores(reports["biased"], system)
        assert biased.predictions(Scoring.RAW) == ["spam"] * len(QUESTIONS), (
            "the prior decides every raw answer"
        )
        assert len(set(plain.predictions(Scoring.RAW))) > 2, "precondition: without it the answers vary"
        flags = {
            v: c["collapse"]["flagged"] for v, c in reports["biased"]["scoring"]["variants"][system].items()
        }
        assert flags["raw"], "and the report flags the collapse"
        for variant in (Scoring.CALIBRATED, Scoring.PMI):
            same = sum(
                p == b for p, b in zip(plain.predictions(variant), biased.predictions(variant), strict=True)
            )
            assert same >= len(QUESTIONS) - 1, f"{system} {variant}: the prior still moves answers"
            assert not flags[variant]

            # What decides an answer is each label's score against the row's other labels. The prior moved
            # "spam" by 3/4 of PRIOR nats there; divided out, what is left is its side effect on the later label
            # tokens' normaliser (and, for calibration, on the average over the content-free inputs).
            def centred(s: LabelScores, v: Scoring) -> np.ndarray:
                a = s.adjusted(v)
                return a - a.mean(1, keepdims=True)

            moved = np.abs(centred(biased, Scoring.RAW) - centred(plain, Scoring.RAW)).max()
            left = np.abs(centred(biased, variant) - centred(plain, variant)).max()
            assert moved > PRIOR / 2 and left < moved / 3


def test_question_free_prompts_are_scored_once_per_system_and_label_set(planted):
    reports, calls, _ = planted
    # per model: each system scores its 12 questions, then its 3 content-free prompts and the bare instruction
    assert calls == [len(QUESTIONS), 4] * 4
    for report in reports.values():
        for system, groups in report["scoring"]["label_scores"].items():
            [group] = groups
            assert np.shape(group["content_free"]) == (3, len(LABELS)) and len(group["bare"]) == len(LABELS)
            assert report["systems"][system]["scoring"] == report["scoring"]["chosen"][system]


def test_best_is_chosen_on_validation_and_kept_for_a_test_file(planted):
    reports, _, root = planted
    report = reports["biased"]
    variants = report["scoring"]["variants"]["base_zero_shot"]
    chosen = report["scoring"]["chosen"]
    assert variants[chosen["base_zero_shot"]]["value"] == max(v["value"] for v in variants.values())
    assert report["systems"]["base_zero_shot"]["macro_f1"] == variants[chosen["base_zero_shot"]]["value"]
    assert chosen["base_zero_shot"] != "raw", "the planted prior makes raw scoring the worst choice"
    assert report["scoring"]["how"] == "chosen on this validation split"

    # a later test file is scored with the variants recorded for the run, whatever would do best on it
    test = write_jsonl(
        root / "test.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": f"Label this message: {QUESTIONS[2]}"},
                    {"role": "assistant", "content": "spam"},
                ],
                "label": "spam",
                "source": "test.jsonl:1",
            }
        ],
    )
    recorded = {"base_zero_shot": "pmi", "base_few_shot": "length"}
    again = evaluate(
        EvalConfig(systems=["base_zero_shot", "base_few_shot"], few_shot_k=2),
        root / "biased",
        None,
        root / "validation.jsonl",
        test,
        root / "eval-test",
        LABELS,
        progress=False,
        scoring_choice=recorded,
    )
    tested = json.loads(again.report_path.read_text(encoding="utf-8"))
    assert tested["scoring"]["chosen"] == recorded
    assert tested["scoring"]["how"] == "recorded: chosen on the run's validation split"
    assert {s: m["scoring"] for s, m in tested["systems"].items()} == recorded
