"""`specialize tune --resume STUDY` after the tune process was killed: the same study goes on, and only the trial
in flight is lost (its values are tried again)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from studies import load_trials, study_config, the_study, tune_command

from specialize.cli.main import main
from specialize.config import load_config
from specialize.runs import Registry
from specialize.search.worker import LOST

LONGER_TRIALS = {"max_steps": None, "epochs": 4, "batch_size": 4, "log_every": 100}


def test_a_killed_study_resumes_and_loses_only_the_trial_in_flight(tmp_path, tiny_model_dir):
    path = study_config(tmp_path, tiny_model_dir, train=LONGER_TRIALS)
    config = load_config(path)
    args = [str(path), "--budget", "5m", "--trials", "5", "--eval-every", "24", "--search-only"]
    child = subprocess.Popen(
        tune_command(*args), env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL
    )
    registry = Registry(config.registry_url)
    deadline, in_flight = time.monotonic() + 240, None
    while in_flight is None and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = (
            [r for r in registry.list_runs() if r["name"].endswith("-study")] if config.registry_url else []
        )
        if not rows:
            continue
        try:
            trials = load_trials(rows[0]["id"], config.registry_url)
        except KeyError:  # the study's run row comes a moment before its Optuna study
            continue
        done = [t for t in trials if t.state.name == "COMPLETE"]
        running = [t for t in trials if t.state.name == "RUNNING" and t.intermediate_values]
        if done and running:
            in_flight = running[0]
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL and in_flight is not None, (
        "the study finished before it could be killed"
    )
    study = the_study(registry)["id"]
    before = {
        t.number: t.value for t in load_trials(study, config.registry_url) if t.state.name == "COMPLETE"
    }

    assert (
        main(["--quiet", "tune", "--resume", study, "--storage", config.registry_url, "--search-only"]) == 0
    )

    trials = load_trials(study, config.registry_url)
    by_number = {t.number: t for t in trials}
    assert sorted(by_number) == list(range(len(trials))), "one study, its trial numbers continued"
    assert {n: by_number[n].value for n in before} == before, "finished trials are kept as they were"
    lost = by_number[in_flight.number]
    assert lost.state.name == "FAIL" and lost.user_attrs["reason"] == LOST
    assert registry.get_run(lost.user_attrs["run"])["status"] == "failed"
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == in_flight.number]
    assert retry.params == in_flight.params and retry.state.name in ("COMPLETE", "PRUNED")
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 5 and len(trials) == 6, "only the trial in flight was lost"
    runs = [r for r in registry.list_runs(parent_run=study)]
    assert len(runs) == 6 and len({r["id"] for r in runs}) == 6
