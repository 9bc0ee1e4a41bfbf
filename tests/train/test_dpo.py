"""DPO: targets on the answer only, a policy that starts at its reference, and training that learns the preference."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import write_jsonl

from specialize.cli.main import main
from specialize.config import TrainConfig
from specialize.data.template import IGNORE
from specialize.train import train
from specialize.train.preference import encode_pair

TOPICS = [
    "the weather",
    "my parcel",
    "a refund",
    "the invoice",
    "my password",
    "the courier",
    "a prize",
    "pills",
]


def pair_rows(n: int, start: int = 0) -> list[dict]:
    """Pairs whose chosen answer is always polite and the rejected one always rude, as raw preference rows."""
    return [
        {
            "prompt": f"Tell me about {TOPICS[i % len(TOPICS)]}, case {i}.",
            "chosen": "Thank you for asking, I am glad to help.",
            "rejected": "No. Go away.",
        }
        for i in range(start, start + n)
    ]


def prepared(rows: list[dict]) -> list[dict]:
    out = []
    for i, r in enumerate(rows):
        prompt = [{"role": "user", "content": r["prompt"]}]
        chosen = [{"role": "assistant", "content": r["chosen"]}]
        rejected = [{"role": "assistant", "content": r["rejected"]}]
        out.append(
            {
                "messages": prompt + chosen,
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "source": f"p:{i}",
            }
        )
    return out


def test_a_pair_has_targets_on_its_answer_only(tiny_tokenizer):
    row = prepared(pair_rows(1))[0]
    row["prompt"] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": "and now?"},
    ]
    pair = encode_pair(tiny_tokenizer, row)
    for encoded, answer in ((pair.chosen, row["chosen"]), (pair.rejected, row["rejected"])):
        targets = [t for t in encoded.labels if t != IGNORE]
        text = tiny_tokenizer.decode(targets)
        assert text.startswith(answer[0]["content"]) and "earlier" not in text


def test_dpo_starts_at_log_2_and_learns_the_preference(tmp_path, tiny_model_dir):
    train_file = write_jsonl(tmp_path / "train.jsonl", prepared(pair_rows(32)))
    val_file = write_jsonl(tmp_path / "validation.jsonl", prepared(pair_rows(8, start=100)))
    untrained = train(
        TrainConfig(method="dpo", max_steps=1, batch_size=4, learning_rate=1e-9),
        tiny_model_dir,
        train_file,
        val_file,
        tmp_path / "untrained",
        progress=False,
    )
    # LoRA starts as a no-op, so the policy equals its reference: every margin is 0, the loss log 2
    assert untrained.validation_loss == pytest.approx(math.log(2), abs=1e-3)
    result = train(
        TrainConfig(method="dpo", max_steps=16, batch_size=4, learning_rate=5e-3, dpo_beta=0.5),
        tiny_model_dir,
        train_file,
        val_file,
        tmp_path / "trained",
        progress=False,
    )
    assert result.validation_loss < 0.5 * math.log(2)  # unseen pairs of the same preference
    logged = [json.loads(line) for line in (tmp_path / "trained" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["loss"] < logged[0]["loss"]


def test_dpo_without_an_adapter_is_a_config_error():
    with pytest.raises(ValueError, match="reference model"):
        TrainConfig(method="dpo", adapter=None)


def test_specialize_run_with_dpo_ranks_the_preferred_answers(tmp_path, tiny_model_dir, capsys):
    write_jsonl(tmp_path / "pairs.jsonl", pair_rows(40))
    write_jsonl(tmp_path / "heldout.jsonl", pair_rows(8, start=200))
    config = {
        "name": "polite",
        "base_model": str(tiny_model_dir),
        "runs_dir": str(tmp_path / "runs"),
        "data": {"train": "pairs.jsonl", "validation": "heldout.jsonl", "dedupe": {"near": False}},
        "train": {"method": "dpo", "max_steps": 16, "batch_size": 4, "learning_rate": 5e-3, "dpo_beta": 0.5},
        "eval": {"systems": ["base_zero_shot", "fine_tuned"]},
    }
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--quiet", "run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "preference" in out and "preference_accuracy" in out
    [run_dir] = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["task"] == "preference" and report["headline"] == "preference_accuracy"
    assert report["systems"]["fine_tuned"]["preference_accuracy"] == 1.0
    # a new file of pairs is read as pairs, as the run read its own (not as chat rows)
    write_jsonl(tmp_path / "later.jsonl", pair_rows(6, start=300))
    assert main(["--quiet", "eval", str(run_dir), "--data", str(tmp_path / "later.jsonl")]) == 0
    later = json.loads((run_dir / "eval" / "later" / "report.json").read_text())
    assert later["task"] == "preference" and later["n_examples"] == 6
    assert later["systems"]["fine_tuned"]["preference_accuracy"] == 1.0


def test_dpo_on_chat_rows_names_the_row_and_the_fix(tmp_path, tiny_model_dir, chat_dataset):
    with pytest.raises(Exception) as err:
        train(
            TrainConfig(method="dpo", max_steps=1, batch_size=4),
            tiny_model_dir,
            chat_dataset.train,
            chat_dataset.validation,
            tmp_path / "t",
            progress=False,
        )
    assert "preference pairs" in str(err.value) and "train.method sft" in str(err.value)


def test_specialize_run_with_dpo_on_chat_rows_stops_before_creating_a_run(run_config, tmp_path, capsys):
    code = main(["--quiet", "run", str(run_config), "--set", "train.method=dpo"])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("error: ") and "train.method sft" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
