"""Training on a GPU under bfloat16 autocast gives what float32 on the CPU gives, within bfloat16's precision.

Tests marked `gpu` run where PyTorch sees a CUDA GPU (conftest skips them elsewhere); the bfloat16 ones without
the mark run the same autocast code on the CPU, so CI covers it too.
"""

from __future__ import annotations

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from specialize.cli.main import main
from specialize.config import TrainConfig
from specialize.data import encode_conversation
from specialize.errors import ResourceError
from specialize.train import train
from specialize.train.batching import collate, target_losses
from specialize.train.placement import choose_placement

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _lora_model(tiny_model_dir, device):
    torch.manual_seed(0)  # the adapter is drawn on the CPU, so every device starts from the same weights
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(base, config).to(device).train()


def test_auto_is_float32_on_a_machine_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    placement = choose_placement("auto", "auto")
    assert placement.device.type == "cpu" and placement.autocast_dtype is None
    assert choose_placement("cpu", "bfloat16").autocast_dtype == torch.bfloat16


def test_asking_for_a_gpu_that_is_not_there_names_the_setting():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ResourceError, match="train.device is cuda .* set train.device to auto or cpu"):
        choose_placement("cuda", "auto")


def test_specialize_run_on_a_missing_gpu_stops_before_creating_a_run(run_config, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["--quiet", "run", str(run_config), "--set", "train.device=cuda"])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and "train.device" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]


@pytest.mark.gpu
def test_auto_picks_the_gpu_and_bfloat16():
    placement = choose_placement("auto", "auto")
    assert placement.device.type == "cuda"
    assert placement.autocast_dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)


@pytest.mark.gpu
def test_target_losses_on_the_gpu_equal_the_cpu(tiny_model_dir, tiny_tokenizer):
    """Shared prefix, row groups and the row index of every loss, moved to the GPU, in float32."""
    rows = [("late parcel", "shipping"), ("refund", "billing"), ("win", "spam")]
    rows.append((" ".join(["the parcel never came and nobody answers"] * 12), "shipping"))
    prompt = "Classify the customer message into billing, shipping or spam. Reply with the label only.\n\n"
    examples = [
        encode_conversation(
            tiny_tokenizer, [{"role": "user", "content": prompt + t}, {"role": "assistant", "content": a}]
        )
        for t, a in rows
    ]
    batch = collate(examples, tiny_tokenizer.pad_token_id)
    assert int(batch["shared_prefix"]) > 0
    results = {}
    for device in ("cpu", "cuda"):
        model = _lora_model(tiny_model_dir, device)
        losses, index = target_losses(model, batch)
        losses.sum().backward()
        grads = {n: p.grad.cpu() for n, p in model.named_parameters() if p.requires_grad}
        per_row = torch.zeros(len(rows)).index_add(0, index.cpu(), losses.detach().cpu())
        results[device] = (per_row, len(losses), grads)
    # The CPU runs the rows in groups, the GPU in one pass: the losses come in another order, row by row equal.
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], rtol=1e-4, atol=1e-4)
    assert results["cuda"][1] == results["cpu"][1]
    for name, grad in results["cpu"][2].items():
        torch.testing.assert_close(results["cuda"][2][name], grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_training_tracks_float32(tmp_path, tiny_model_dir, chat_dataset, device, caplog):
    """The same steps in float32 on the CPU and under bfloat16 autocast reach about the same validation loss."""
    files = (tiny_model_dir, chat_dataset.train, chat_dataset.validation)
    common = {"max_steps": 12, "batch_size": 4, "learning_rate": 5e-3}
    exact = train(
        TrainConfig(**common, device="cpu", precision="float32"), *files, tmp_path / "f32", progress=False
    )
    with caplog.at_level(logging.INFO, logger="specialize.train"):
        mixed = train(
            TrainConfig(**common, device=device, precision="bfloat16"),
            *files,
            tmp_path / "bf16",
            progress=False,
        )
    assert "bfloat16 autocast" in caplog.text
    assert mixed.validation_loss == pytest.approx(exact.validation_loss, rel=0.03)
    weights = load_file(mixed.output_dir / "adapter_model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
