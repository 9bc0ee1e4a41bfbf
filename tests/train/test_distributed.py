"""Data-parallel training in two CPU processes (gloo), started as `torchrun` and `specialize run --processes 2`
start them: the same losses as one process with the same global batch, a run killed with SIGKILL resumes to the
weights of an uninterrupted one, and a process that dies stops the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from specialize.cli.main import main
from specialize.config import TrainConfig, load_config
from specialize.runs import Registry
from specialize.train import train

CHILD = """
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from specialize.config import TrainConfig
from specialize.train import train
config = TrainConfig.model_validate_json(sys.argv[1])
train(config, *map(Path, sys.argv[2:6]), seed=int(sys.argv[6]), progress=False)
"""


def _torchrun(
    tmp_path: Path, config: TrainConfig, files: tuple[Path, Path, Path], out: Path, seed: int = 0
) -> None:
    """`train` in two processes under torchrun, as a user's own script would call it."""
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    subprocess.run(
        [*command, str(script), config.model_dump_json(), *map(str, files), str(out), str(seed)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
        timeout=300,
    )


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def test_two_processes_reach_the_losses_of_one_with_the_same_global_batch(
    tmp_path, tiny_model_dir, chat_dataset
):
    steps = 12
    files = (tiny_model_dir, chat_dataset.train, chat_dataset.validation)
    one = TrainConfig(max_steps=steps, batch_size=4, learning_rate=5e-3, log_every=1)
    reference = train(one, *files, tmp_path / "one", seed=0, progress=False)

    two = one.model_copy(update={"batch_size": 2})  # 2 rows x 2 processes: the same global batch of 4
    _torchrun(tmp_path, two, files, tmp_path / "two")

    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["processes"] == 2 and result["steps"] == steps
    assert result["train_tokens"] == reference.train_tokens, "every row of every global batch trained once"
    # The only differences are float32 rounding: the loss summed over processes in float32 (2^-24 relative),
    # the gradients of 2 + 2 rows summed in another order than those of 4. Measured, the losses agree to 1e-7
    # for the first ~50 steps; past that a tiny model at this learning rate amplifies rounding chaotically
    # (3e-3 relative by step 300), so the first 12 steps are compared.
    torch.testing.assert_close(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5, atol=0)
    expected, got = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    # Rank 0 alone writes: no second metrics file, no checkpoints left, one adapter.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["adapter", "metrics.jsonl", "result.json"]


def _start_run(config_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "specialize", "--quiet", "run", str(config_path), "--processes", "2", *extra],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(runs_dir: Path, child: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not list(runs_dir.glob("*/train/checkpoints/step-*")):
        assert child.poll() is None, f"the run ended before its first checkpoint: {child.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.01)


def _ranks(launcher: subprocess.Popen[str]) -> dict[int, psutil.Process]:
    found = {}
    for process in psutil.Process(launcher.pid).children():
        rank = process.environ().get("RANK")
        if rank is not None:
            found[int(rank)] = process
    return found


def test_sigkill_then_resume_with_two_processes_equals_uninterrupted(tmp_path, config_factory):
    config_path = config_factory(
        train={"max_steps": 200, "batch_size": 2, "checkpoints": {"every": 2}},
        eval={"max_examples": 4, "systems": ["fine_tuned"]},  # evaluation is not what is tested here
    )
    config = load_config(config_path)
    launcher = _start_run(config_path)
    _wait_for_checkpoint(config.runs_dir, launcher)
    ranks = _ranks(launcher)
    launcher.send_signal(signal.SIGKILL)  # the launcher, as the out-of-memory killer or a lost shell would
    assert launcher.wait() == -signal.SIGKILL
    assert len(ranks) == 2
    gone, alive = psutil.wait_procs(list(ranks.values()), timeout=30)
    assert not alive, "the training processes die with their launcher"
    [row] = Registry(config.registry_url).list_runs()
    run_dir = config.runs_dir / row["id"]
    assert not (run_dir / "train" / "adapter").exists()

    # A different number of processes would change the global batch: refused, naming the fix.
    assert main(["--quiet", "train", "--resume", row["id"], "--registry", config.registry_url]) == 6
    resume = ["--quiet", "train", "--resume", row["id"], "--registry", config.registry_url]
    assert main([*resume, "--processes", "2"]) == 0
    assert Registry(config.registry_url).get_run(row["id"])["status"] == "completed"

    # The uninterrupted run: one process with the same global batch, in this process (a third launch of two
    # processes would double the test's time). At this learning rate the two agree to 1e-6 relative over the
    # 200 steps (measured: at most 1.5e-8 apart), far inside what a resume that lost the batch order, an RNG
    # state or a step would move them.
    files = (Path(config.base_model), run_dir / "data" / "train.jsonl", run_dir / "data" / "validation.jsonl")
    one = config.train.model_copy(update={"batch_size": 4})
    reference = train(one, *files, tmp_path / "uninterrupted", seed=config.seed, progress=False)
    expected, got = _weights(reference.output_dir.parent), _weights(run_dir / "train")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    steps = [
        m["step"]
        for m in Registry(config.registry_url).get_metrics(row["id"], "train")
        if m["name"] == "loss"
    ]
    assert sorted(steps) == sorted(set(steps)) and max(steps) == 200, "each step logged once"


def test_a_process_that_dies_stops_the_others_with_a_clear_error(config_factory):
    config_path = config_factory(train={"max_steps": 100_000, "batch_size": 2, "checkpoints": {"every": 2}})
    launcher = _start_run(config_path)
    _wait_for_checkpoint(load_config(config_path).runs_dir, launcher)
    ranks = _ranks(launcher)
    ranks[1].send_signal(signal.SIGKILL)
    try:
        code = launcher.wait(timeout=60)
    except subprocess.TimeoutExpired:
        launcher.kill()
        pytest.fail("the launcher hung after a training process died")
    err = launcher.stderr.read()
    assert code != 0
    assert "process 1 of 2 was killed (SIGKILL)" in err and "specialize train --resume" in err
    gone, alive = psutil.wait_procs([ranks[0]], timeout=30)
    assert not alive, "rank 0 was stopped"


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_a_sharding_accelerate_config_is_refused_before_anything_is_written(
    run_config, monkeypatch, capsys, variable
):
    # What `accelerate launch --config_file fsdp.yaml` (or a DeepSpeed one) sets for each process.
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", variable: "true"}.items():
        monkeypatch.setenv(name, value)
    assert main(["--quiet", "run", str(run_config)]) == 2
    err = capsys.readouterr().err
    assert f"{variable}=true" in err and "--processes N" in err
    assert not (run_config.parent / "runs").exists(), "nothing written"


def test_only_run_and_resume_take_several_processes(run_config, monkeypatch, capsys):
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    assert main(["--quiet", "eval", "some-run", "--data", str(run_config)]) == 2
    assert "specialize eval runs in one process" in capsys.readouterr().err
