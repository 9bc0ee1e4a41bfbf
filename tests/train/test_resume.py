"""A run killed with SIGKILL mid-training resumes to the same weights as a run that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specialize.config import TrainConfig
from specialize.train import train

STEPS = 300
CHILD = """
import sys, torch
torch.set_num_threads(1)
from specialize.config import TrainConfig
from specialize.train import train
config = TrainConfig.model_validate_json(sys.argv[1])
from pathlib import Path
train(config, *map(Path, sys.argv[2:6]), seed=0, progress=False)
"""


def _config(device: str = "cpu") -> TrainConfig:
    return TrainConfig(
        max_steps=STEPS,
        batch_size=4,
        learning_rate=5e-3,
        checkpoints={"every": 2, "keep": 2},
        device=device,
    )


def _weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(adapter_dir / "adapter_model.safetensors")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir, chat_dataset, device):
    config = _config(device)
    files = (str(tiny_model_dir), str(chat_dataset.train), str(chat_dataset.validation))
    reference = train(config, *map(Path, files), tmp_path / "uninterrupted", seed=0, progress=False)

    out = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, config.model_dump_json(), *files, str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while (
        not any((out / "checkpoints").glob("step-*")) and child.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, "the child finished before it could be killed"
    assert not (out / "adapter").exists()

    resumed = train(config, *map(Path, files), out, seed=0, progress=False, resume=True)

    assert resumed.steps == reference.steps == STEPS
    expected, got = _weights(reference.output_dir), _weights(resumed.output_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not (out / "checkpoints").exists(), "checkpoints are removed once the weights are saved"


def test_checkpoint_is_complete_or_absent(tmp_path, tiny_model_dir, chat_dataset):
    config = TrainConfig(max_steps=6, batch_size=4, checkpoints={"every": 2, "keep": 2})
    out = tmp_path / "run"
    train(config, tiny_model_dir, chat_dataset.train, chat_dataset.validation, out, progress=False)
    # After a normal finish nothing partial is left anywhere under train/.
    assert not list(out.rglob("*.partial"))
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "result.json").exists()
