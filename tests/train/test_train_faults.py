"""Faults are reported before or instead of a broken run: too little memory, a diverging loss."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from specialize.config import CheckpointConfig, TrainConfig
from specialize.errors import ResourceError, TrainingError
from specialize.train import train


def test_memory_precheck_refuses_a_batch_that_cannot_fit(tmp_path, tiny_model_dir, chat_dataset, monkeypatch):
    # A machine with 1 MiB free: the estimate itself is tested against measured activations in test_resources.
    # (A huge batch no longer overflows a real machine: an SFT batch runs as passes of bounded size.)
    monkeypatch.setattr("specialize.train.resources.available_memory", lambda: 2**20)
    config = TrainConfig(max_steps=1, batch_size=8)
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


class _Stop(Exception):
    """Raised from a metrics callback to stop a replayed run where the checkpoints of interest exist."""


def test_early_stopping_stops_and_keeps_the_best_weights(tmp_path, tiny_model_dir, chat_dataset):
    files = (tiny_model_dir, chat_dataset.train, chat_dataset.validation)
    config = TrainConfig(
        max_steps=60, batch_size=4, learning_rate=0.1, early_stopping={"eval_every": 2, "patience": 2}
    )
    result = train(config, *files, tmp_path / "stopped", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["validation_loss"] for r in rows if "validation_loss" in r}
    best_step = min(evals, key=lambda step: (evals[step], step))

    assert result.steps < 60 and result.steps == max(evals), "training stopped at an evaluation, early"
    assert sorted(evals)[-2:] == [result.steps - 2, result.steps] and best_step < result.steps - 2
    assert result.validation_loss == evals[best_step]

    # The same run replayed without early stopping (the schedule depends only on max_steps), keeping a checkpoint
    # at every evaluation step, and halted once past the step where the first one stopped.
    def halt(step: int, _row: dict[str, float]) -> None:
        if step > result.steps:
            raise _Stop

    replay = config.model_copy(
        update={"early_stopping": None, "log_every": 1, "checkpoints": CheckpointConfig(every=2, keep=60)}
    )
    with pytest.raises(_Stop):
        train(replay, *files, tmp_path / "replay", on_metrics=halt, progress=False)
    checkpoints = tmp_path / "replay" / "checkpoints"

    def at(step: int) -> dict[str, torch.Tensor]:
        weights = load_file(checkpoints / f"step-{step:06d}" / "trainable.safetensors")
        return {name.replace(".default", ""): tensor for name, tensor in weights.items()}

    saved = load_file(tmp_path / "stopped" / "adapter" / "adapter_model.safetensors")
    best, last = at(best_step), at(result.steps)
    assert saved.keys() == best.keys()
    for name in saved:
        torch.testing.assert_close(saved[name], best[name], msg=name)
    assert any(not torch.allclose(saved[name], last[name]) for name in saved), "the last weights were kept"
