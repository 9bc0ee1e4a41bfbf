"""Several worker processes share one study through the registry's database: SQLite on one machine (`--workers
2`), and a real PostgreSQL server, where a second `specialize tune --resume STUDY --search-only` joins the study
as another machine would."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time

from studies import load_trials, postgres_url, study_config, the_study, tune_command  # noqa: F401  (fixture)

from specialize.cli.main import main
from specialize.config import load_config
from specialize.runs import Registry

TRIALS = {"max_steps": None, "epochs": 3, "batch_size": 4, "log_every": 100}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _check_shared(study: str, url: str, n_trials: int) -> None:
    trials = load_trials(study, url)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == n_trials and len({t.number for t in trials}) == len(trials)
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2, f"both workers ran trials: {sorted(workers)}"
    runs = Registry(url).list_runs(parent_run=study)
    assert sorted(r["id"] for r in runs) == sorted(
        t.user_attrs["run"] for t in trials if "run" in t.user_attrs
    )


def test_two_workers_on_sqlite_share_one_study(tmp_path, tiny_model_dir):
    path = study_config(tmp_path, tiny_model_dir, train=TRIALS)
    args = [
        str(path),
        "--budget",
        "5m",
        "--trials",
        "6",
        "--workers",
        "2",
        "--eval-every",
        "24",
        "--search-only",
    ]
    done = subprocess.run(tune_command(*args), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    config = load_config(path)
    _check_shared(the_study(Registry(config.registry_url))["id"], config.registry_url, 6)


def test_a_second_process_joins_a_study_on_postgresql(tmp_path, tiny_model_dir, postgres_url):
    path = study_config(tmp_path, tiny_model_dir, train=TRIALS)
    args = [str(path), "--storage", postgres_url, "--budget", "5m", "--eval-every", "24"]
    # The first process stops at 3 trials in the study and the joining one at 6, so both run trials however fast
    # this machine is: with one limit, a quick first process could finish them all before the second one starts.
    first = subprocess.Popen(
        tune_command(*args, "--trials", "3", "--search-only"), env=ENV, stderr=subprocess.PIPE, text=True
    )
    registry, deadline, study = Registry(postgres_url), time.monotonic() + 120, None
    while study is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = [
            r for r in registry.list_runs() if r["name"].endswith("-study") and str(tmp_path) in r["run_dir"]
        ]
        with contextlib.suppress(KeyError):  # the study's run row comes a moment before its Optuna study
            study = rows[0]["id"] if rows and load_trials(rows[0]["id"], postgres_url) else None
    assert study is not None, "the first process created the study"
    join = ["--resume", study, "--storage", postgres_url, "--trials", "6", "--search-only"]
    second = subprocess.run(tune_command(*join), env=ENV, capture_output=True, text=True, timeout=600)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, err[-3000:] + second.stderr[-3000:]
    _check_shared(study, postgres_url, 6)


def test_a_machine_without_the_study_directory_joins_through_postgresql(
    tmp_path, tiny_model_dir, postgres_url
):
    # Another machine sees the shared registry but not this one's files: removing the study's directory after
    # two trials puts the joining process in its place.
    path = study_config(tmp_path, tiny_model_dir)
    args = ["--quiet", "tune", str(path), "--storage", postgres_url, "--budget", "5m", "--trials", "2"]
    assert main([*args, "--search-only"]) == 0
    study = the_study(Registry(postgres_url), under=tmp_path)
    root = load_config(path).runs_dir / study["id"]
    digests = {
        name: hashlib.sha256((root / name).read_bytes()).hexdigest()
        for name in ("data/train.jsonl", "search/objective_sample.jsonl")
    }
    shutil.rmtree(root)

    join = [
        "--quiet",
        "tune",
        "--resume",
        study["id"],
        "--storage",
        postgres_url,
        "--trials",
        "4",
        "--search-only",
    ]
    assert main(join) == 0

    assert {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in digests} == digests
    trials = load_trials(study["id"], postgres_url)
    assert sorted(t.number for t in trials if t.state.name in ("COMPLETE", "PRUNED")) == [0, 1, 2, 3]
    assert sorted(p.name[-3:] for p in (root / "trials").iterdir()) == ["002", "003"], (
        "trials run here keep their files here"
    )
