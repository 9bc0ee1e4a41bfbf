"""The CLI agrees with itself (issue 14, defect 7): `data check` gives a file the verdict and exit status `run`
gives it; a folder given as a run config is named as a folder; `--quiet` hides transformers' warnings."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

from conftest import chat_row

from specialize.cli.main import main


def cli(*args: str) -> tuple[int, str]:
    """Exit status and output (stdout and stderr) of `specialize --quiet ARGS`."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["--quiet", *args])
    return code, out.getvalue()


def test_an_empty_file_fails_check_and_run_alike(config_factory, chat_dataset):
    chat_dataset.train.write_text("", encoding="utf-8")
    config = config_factory()
    checked, check_err = cli("data", "check", str(chat_dataset.train))
    checked_config, _ = cli("data", "check", str(config))
    ran, run_err = cli("run", str(config))
    assert checked == checked_config == ran == 3
    assert f"error: {chat_dataset.train}" in check_err and "empty" in check_err and "empty" in run_err


def test_an_over_long_row_is_rejected_by_check_and_run_alike(config_factory, chat_dataset):
    rows = chat_dataset.train.read_text(encoding="utf-8").splitlines()
    rows.append(
        json.dumps(chat_row("word " * 1500, "billing", label="billing"))
    )  # over the 1024-token context
    chat_dataset.train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = config_factory(eval={"systems": ["fine_tuned"], "max_examples": 2})
    checked, check_err = cli("data", "check", str(config))
    ran, run_err = cli("run", str(config))
    assert checked == ran == 0, (check_err, run_err)


def test_a_folder_given_as_the_config_is_named_a_folder(tmp_path):
    code, err = cli("run", str(tmp_path))
    assert code == 2 and "is a folder" in err and "does not exist" not in err


def test_quiet_hides_transformers_sequence_length_warning(config_factory, chat_dataset):
    rows = chat_dataset.train.read_text(encoding="utf-8").splitlines()
    rows.append(json.dumps(chat_row("word " * 1500, "billing", label="billing")))
    chat_dataset.train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = config_factory()
    done = subprocess.run(
        [sys.executable, "-m", "specialize", "--quiet", "data", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "sequence length is longer" not in done.stderr and "indexing errors" not in done.stderr


def test_zero_processes_is_refused_before_anything_runs(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "specialize", "run", "--processes", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "--processes" in done.stderr and "1 or more" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def test_a_config_mistake_under_several_processes_is_one_line_before_any_process_starts(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "specialize", "run", str(tmp_path / "missing.yaml"), "--processes", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: config file {tmp_path / 'missing.yaml'} does not exist; pass the path of a run YAML file"
    ]
    assert not (tmp_path / "runs").exists()
