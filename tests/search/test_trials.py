"""What makes trials cheap and prunable: training on a preloaded base model (only the adapter reset between
trials, rows encoded once) gives the same result as a fresh load, and an evaluation hook can stop training."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from specialize.config import TrainConfig
from specialize.models import load_model
from specialize.train import Preloaded, train


def _adapter(path):
    return load_file(path / "adapter_model.safetensors")


def test_a_trial_on_the_preloaded_model_equals_a_fresh_training(tmp_path, tiny_model_dir, chat_dataset):
    files = (tiny_model_dir, chat_dataset.train, chat_dataset.validation)
    model, tokenizer = load_model(tiny_model_dir)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    preloaded = Preloaded(model, tokenizer)
    rank2, rank4 = (
        TrainConfig(max_steps=4, batch_size=4, lora={"rank": 2}),
        TrainConfig(max_steps=4, batch_size=4),
    )

    train(rank2, *files, tmp_path / "first", progress=False, preloaded=preloaded)
    encoded = len(preloaded.encoded)
    again = train(rank4, *files, tmp_path / "second", progress=False, preloaded=preloaded)
    fresh = train(rank4, *files, tmp_path / "fresh", progress=False)

    assert encoded == chat_dataset.n_train + chat_dataset.n_validation and len(preloaded.encoded) == encoded
    assert again.final_train_loss == pytest.approx(fresh.final_train_loss, rel=1e-5)
    tuned, reference = _adapter(again.output_dir), _adapter(fresh.output_dir)
    assert tuned.keys() == reference.keys()
    assert all(torch.allclose(tuned[k], reference[k], atol=1e-6) for k in reference)
    after = preloaded.model.state_dict()
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)


def test_full_fine_tuning_on_the_preloaded_model_gives_its_weights_back(
    tmp_path, tiny_model_dir, chat_dataset
):
    model, tokenizer = load_model(tiny_model_dir)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(max_steps=2, batch_size=4, adapter=None, learning_rate=1e-2)
    files = (tiny_model_dir, chat_dataset.train, chat_dataset.validation)
    train(config, *files, tmp_path / "full", progress=False, preloaded=Preloaded(model, tokenizer))
    assert all(torch.equal(model.state_dict()[k], base[k]) for k in base)


class _Pruned(Exception):
    pass


def test_the_evaluation_hook_runs_every_n_steps_and_can_stop_training(tmp_path, tiny_model_dir, chat_dataset):
    files = (tiny_model_dir, chat_dataset.train, chat_dataset.validation)
    seen: list[tuple[int, bool]] = []

    def record(step, model):
        seen.append((step, model.training))

    train(
        TrainConfig(max_steps=7, batch_size=4),
        *files,
        tmp_path / "all",
        progress=False,
        evaluate_every=3,
        on_evaluation=record,
    )
    assert seen == [(3, False), (6, False), (7, False)], "every 3 steps and the last, in eval mode"

    def stop(step, model):
        if step == 4:
            raise _Pruned

    out = tmp_path / "stopped"
    with pytest.raises(_Pruned):
        train(
            TrainConfig(max_steps=20, batch_size=4),
            *files,
            out,
            progress=False,
            evaluate_every=2,
            on_evaluation=stop,
        )
    assert not (out / "result.json").exists() and not (out / "adapter").exists()
