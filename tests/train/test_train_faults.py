"""Faults are reported before or instead of a broken run: too little memory, a diverging loss."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from specialize.config import TrainConfig
from specialize.errors import ResourceError, TrainingError
from specialize.train import train
from specialize.train.resources import available_memory


def test_memory_precheck_refuses_a_batch_that_cannot_fit(tmp_path, tiny_model_dir, chat_dataset):
    # A batch so large its activations exceed this machine's memory, whatever the machine.
    huge = available_memory() // 1000
    config = TrainConfig(max_steps=1, batch_size=huge)
    out = tmp_path / "train"
    with pytest.raises(ResourceError) as err:
        train(config, tiny_model_dir, chat_dataset.train, chat_dataset.validation, out, progress=False)
    message = str(err.value)
    assert "GiB available" in message and "train.batch_size" in message
    assert not (out / "metrics.jsonl").exists(), "the check runs before the first step"


def test_nan_loss_stops_with_the_setting_to_change(tmp_path, tiny_model_dir, chat_dataset):
    # A model whose weights overflowed (as after a diverged run) makes the very first loss NaN.
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], float("inf"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    config = TrainConfig(max_steps=5, batch_size=4)
    with pytest.raises(TrainingError) as err:
        train(config, broken, chat_dataset.train, chat_dataset.validation, tmp_path / "train", progress=False)
    assert "step 1" in str(err.value) and "train.learning_rate" in str(err.value)
    assert not (tmp_path / "train" / "adapter").exists()


def test_early_stopping_keeps_the_best_weights(tmp_path, tiny_model_dir, chat_dataset):
    config = TrainConfig(
        max_steps=60, batch_size=4, learning_rate=5e-2, early_stopping={"eval_every": 2, "patience": 2}
    )
    result = train(
        config, tiny_model_dir, chat_dataset.train, chat_dataset.validation, tmp_path, progress=False
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["validation_loss"] for r in rows if "validation_loss" in r]
    assert result.validation_loss == pytest.approx(min(losses))
    if result.steps < 60:  # stopped early: the last `patience` evaluations did not improve on the best
        assert min(losses[-2:]) >= min(losses)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
