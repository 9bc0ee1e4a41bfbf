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
from specialize.train import distributed, train
from specialize.train.distributed import Processes

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
    tmp_path: Path,
    config: TrainConfig,
    files: tuple[Path, Path, Path],
    out: Path,
    seed: int = 0,
    env: dict[str, str] | None = None,
) -> None:
    """`train` in two processes under torchrun, as a user's own script would call it."""
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    subprocess.run(
        [*command, str(script), config.model_dump_json(), *map(str, files), str(out), str(seed)],
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
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


def test_a_deepspeed_accelerate_config_is_refused_before_anything_is_written(run_config, monkeypatch, capsys):
    # What `accelerate launch --config_file deepspeed.yaml` sets for each process.
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "ACCELERATE_USE_DEEPSPEED": "true"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["--quiet", "run", str(run_config)]) == 2
    err = capsys.readouterr().err
    assert "ACCELERATE_USE_DEEPSPEED=true" in err and "distributed_type: FSDP" in err
    assert not (run_config.parent / "runs").exists(), "nothing written"


FSDP = {"ACCELERATE_USE_FSDP": "true"}  # what `accelerate launch --use_fsdp` (or an FSDP config) sets


def _full_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def test_fsdp_full_fine_tuning_in_two_processes_reaches_the_losses_of_one(
    tmp_path, tiny_model_dir, chat_dataset
):
    from transformers import AutoModelForCausalLM

    files = (tiny_model_dir, chat_dataset.train, chat_dataset.validation)
    # A global batch of 14 over 48 rows ends each epoch with 6: all of them in process 0's share, so process 1
    # runs a stand-in row with weight 0 (FSDP needs every process in every pass); accumulation 2 sums two
    # batches' gradients in FSDP's sharded gradients.
    one = TrainConfig(
        adapter=None, max_steps=6, batch_size=14, gradient_accumulation=2, learning_rate=1e-3, log_every=1
    )
    reference = train(one, *files, tmp_path / "one", seed=0, progress=False)
    _torchrun(tmp_path, one.model_copy(update={"batch_size": 7}), files, tmp_path / "two", env=FSDP)

    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["processes"] == 2 and result["steps"] == 6
    assert result["train_tokens"] == reference.train_tokens, "every row trained once, the stand-in row never"
    # FSDP sums the same gradients in another order (reduce-scatter over 2 shards), in float32: measured, the
    # losses agree to 1e-7 relative and the weights to 1e-6 absolute. What the tolerances must catch (a row
    # lost or trained twice, the stand-in row counted, a shard's gradient not reduced) changes what a step
    # learns from, and so the next loss, by orders of magnitude more than rounding.
    torch.testing.assert_close(_losses(tmp_path / "two"), _losses(tmp_path / "one"), rtol=1e-5, atol=0)
    expected, got = _full_weights(tmp_path / "one"), _full_weights(tmp_path / "two")
    assert got.keys() == expected.keys(), "the whole model, saved as one process saves it"
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model")
    assert sum(p.numel() for p in loaded.parameters()) == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters()
    )
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["metrics.jsonl", "model", "result.json"]


def test_fsdp_sigkill_then_resume_equals_uninterrupted(tmp_path, config_factory, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # inherited by the processes `--processes 2` starts
    config_path = config_factory(
        train={
            "adapter": None,
            "max_steps": 40,
            "batch_size": 2,
            "learning_rate": 1e-3,
            "checkpoints": {"every": 2},
        },
        eval={"max_examples": 4, "systems": ["fine_tuned"]},
    )
    config = load_config(config_path)
    launcher = _start_run(config_path)
    _wait_for_checkpoint(config.runs_dir, launcher)
    ranks = _ranks(launcher)
    launcher.send_signal(signal.SIGKILL)
    assert launcher.wait() == -signal.SIGKILL
    psutil.wait_procs(list(ranks.values()), timeout=30)
    [row] = Registry(config.registry_url).list_runs()
    run_dir = config.runs_dir / row["id"]
    assert not (run_dir / "train" / "model").exists(), "killed before the end"
    assert list((run_dir / "train" / "checkpoints").glob("step-*")), "a checkpoint to resume from"

    resume = ["--quiet", "train", "--resume", row["id"], "--registry", config.registry_url]
    assert main([*resume, "--processes", "2"]) == 0
    files = (Path(config.base_model), run_dir / "data" / "train.jsonl", run_dir / "data" / "validation.jsonl")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    one = config.train.model_copy(update={"batch_size": 4})
    reference = train(one, *files, tmp_path / "uninterrupted", seed=config.seed, progress=False)
    expected, got = _full_weights(reference.output_dir.parent), _full_weights(run_dir / "train")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_fsdp_refuses_an_adapter_before_anything_is_written(run_config, monkeypatch, capsys):
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", **FSDP}.items():
        monkeypatch.setenv(name, value)
    # the process group of rank 0 of two, without the second process (the refusal comes before any collective)
    monkeypatch.setattr(distributed, "_start", lambda: Processes(0, 2, 0, torch.device("cpu"), sharded=True))
    assert main(["--quiet", "run", str(run_config)]) == 2
    err = capsys.readouterr().err
    assert "train.adapter is lora" in err and "set train.adapter to null" in err
    assert not (run_config.parent / "runs").exists(), "nothing written"


def test_only_run_and_resume_take_several_processes(run_config, monkeypatch, capsys):
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    assert main(["--quiet", "eval", "some-run", "--data", str(run_config)]) == 2
    assert "specialize eval runs in one process" in capsys.readouterr().err


def test_a_checkpoint_written_under_fsdp_resumes_only_under_fsdp(tmp_path):
    from specialize.errors import TrainingError
    from specialize.train.checkpoint import TrainerState, check_processes

    for sharded in (True, False):
        path = tmp_path / f"step-{int(sharded)}"
        path.mkdir()
        (path / "state.json").write_text(json.dumps(TrainerState(processes=2, sharded=sharded).__dict__))
        check_processes(path, 2, sharded)
        with pytest.raises(TrainingError, match=f"ACCELERATE_USE_FSDP={str(sharded).lower()}"):
            check_processes(path, 2, not sharded)
