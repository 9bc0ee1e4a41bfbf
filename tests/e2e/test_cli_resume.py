"""`specialize train --resume RUN` continues a run killed mid-training and completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from specialize.cli.main import main
from specialize.config import load_config
from specialize.runs import Registry


def test_killed_run_resumes_through_the_cli(config_factory, capsys):
    config_path = config_factory(train={"max_steps": 300, "checkpoints": {"every": 2}})
    config = load_config(config_path)
    child = subprocess.Popen(
        [sys.executable, "-m", "specialize", "--quiet", "run", str(config_path)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    checkpoints = []
    while not checkpoints and child.poll() is None and time.monotonic() < deadline:
        checkpoints = list(config.runs_dir.glob("*/train/checkpoints/step-*"))
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    registry = Registry(config.registry_url)
    [row] = registry.list_runs()
    assert row["status"] == "running"  # a killed process cannot mark itself failed

    assert main(["--quiet", "train", "--resume", row["id"], "--registry", config.registry_url]) == 0

    out = capsys.readouterr().out
    assert "fine-tuned" in out and "base, zero-shot" in out
    assert registry.get_run(row["id"])["status"] == "completed"
    run_dir = config.runs_dir / row["id"]
    assert (run_dir / "eval" / "report.json").exists() and (run_dir / "model_card.md").exists()
    steps = [m["step"] for m in registry.get_metrics(row["id"], "train") if m["name"] == "loss"]
    assert sorted(steps) == sorted(set(steps)) and max(steps) == 300, "each step logged once"
