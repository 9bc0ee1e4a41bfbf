"""`train.compile`: torch.compile of the decoder layers, for a CUDA GPU only.

On a CPU the option is refused with the setting to change, whether the config says `device: cpu` or `auto`
resolves to the CPU; the `gpu` test (skipped without CUDA) trains compiled and eager from the same seed and
compares their losses.
"""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from specialize.cli.main import main
from specialize.config import TrainConfig
from specialize.errors import ConfigError
from specialize.train import train


def test_compile_on_a_cpu_device_is_a_config_error_naming_the_key():
    with pytest.raises(
        ValidationError, match="train.compile compiles for a CUDA GPU and train.device is cpu"
    ):
        TrainConfig(compile=True, device="cpu")


def test_compile_where_auto_resolves_to_the_cpu_stops_before_a_run_is_created(run_config, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["--quiet", "run", str(run_config), "--set", "train.compile=true"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: train.compile") and "Traceback" not in err
    assert "--set train.compile=false" in err
    assert not (tmp_path / "runs").exists() or not [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]


def test_train_called_directly_refuses_compile_on_the_cpu(tmp_path, tiny_model_dir, chat_dataset):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = TrainConfig(compile=True, max_steps=1)
    with pytest.raises(ConfigError, match="training runs on cpu here"):
        train(config, tiny_model_dir, chat_dataset.train, chat_dataset.validation, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "refused before anything is written"


@pytest.mark.gpu
@pytest.mark.parametrize("adapter", ["lora", None])
def test_compiled_layers_train_to_the_losses_of_eager_ones(tmp_path, tiny_model_dir, chat_dataset, adapter):
    files = (tiny_model_dir, chat_dataset.train, chat_dataset.validation)
    # float32, so that the comparison is of compiled against eager code, not of two bfloat16 roundings
    eager = TrainConfig(
        adapter=adapter, max_steps=8, batch_size=4, learning_rate=5e-3, log_every=1, precision="float32"
    )
    train(eager, *files, tmp_path / "eager", seed=0, progress=False)
    train(eager.model_copy(update={"compile": True}), *files, tmp_path / "compiled", seed=0, progress=False)

    def losses(name: str) -> list[float]:
        return [
            json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]

    # Inductor fuses and reorders float32 arithmetic, so the two agree to rounding, not bit for bit (not
    # measured: no GPU was at hand when this was written); 1e-3 relative leaves rounding room over 8 steps
    # and still catches a layer computed wrongly, which moves the losses by far more.
    torch.testing.assert_close(losses("compiled"), losses("eager"), rtol=1e-3, atol=0)
