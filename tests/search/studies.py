"""Fixtures of the search tests: study configs on the tiny model, a plain-text set (its objective, the validation
loss, tells every trial apart, so pruning can be watched), and a throwaway PostgreSQL server."""

from __future__ import annotations

import contextlib
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import write_chat_dataset, write_jsonl, write_run_config

WORDS = [
    "the",
    "contract",
    "states",
    "that",
    "payment",
    "is",
    "due",
    "within",
    "thirty",
    "days",
    "of",
    "the",
    "invoice",
    "date",
]


def text_rows(n: int, start: int = 0) -> list[dict[str, str]]:
    """Plain-text documents (continued pre-training): shuffled runs of one sentence's words, all distinct."""
    rows = []
    for i in range(start, start + n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)]
        rows.append({"text": f"document {i}: " + " ".join(words) + "."})
    return rows


def study_config(
    directory: pathlib.Path, model_dir: pathlib.Path, text: bool = False, **changes: Any
) -> pathlib.Path:
    """A run YAML for `specialize tune` on the tiny model: the 3-label chat set (or plain text), short trials."""
    if text:
        write_jsonl(directory / "data" / "train.jsonl", text_rows(48))
        write_jsonl(directory / "data" / "validation.jsonl", text_rows(12, start=1000))
    else:
        write_chat_dataset(directory)
    defaults: dict[str, Any] = {
        "train": {"max_steps": None, "epochs": 1, "batch_size": 4, "log_every": 100},
        "search": {
            "train.learning_rate": {"log_uniform": [1e-4, 3e-2]},
            "train.lora.rank": {"choice": [2, 4]},
        },
    }
    for key, value in changes.items():
        defaults[key] = value
    return write_run_config(directory, model_dir, **defaults)


def tune_command(*args: str) -> list[str]:
    """`specialize --quiet tune ARGS` as a new process."""
    return [sys.executable, "-m", "specialize", "--quiet", "tune", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_bin() -> pathlib.Path | None:
    found = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return pathlib.Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own, on a free loopback port, for the session; stopped and removed after.

    PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user (Debian's package
    creates it) and its commands run through runuser.
    """
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[dev]')")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    as_user: list[str] = []
    folder = pathlib.Path(tempfile.mkdtemp(prefix="specialize-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def the_study(registry: Any, under: pathlib.Path | None = None) -> dict[str, Any]:
    """The one study run in a registry (with `under`, the one whose directory is there: a shared server)."""
    [row] = [
        r
        for r in registry.list_runs()
        if r["name"].endswith("-study") and (under is None or r["run_dir"].startswith(str(under)))
    ]
    return row


def load_trials(study: str, url: str) -> list[Any]:
    """The study's trials, as Optuna stores them."""
    import optuna

    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
