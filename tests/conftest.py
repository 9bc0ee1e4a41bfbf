"""Shared fixtures: a tiny offline chat model, a small classification dataset, a run config using both, and
finished runs of it.

Everything is built under pytest's temporary directories; no test reads or writes ~/.cache or the network.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Before anything imports huggingface_hub, which reads these once: no test may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402

from specialize.config import RunConfig, load_config  # noqa: E402
from specialize.runs import Registry, RunDir  # noqa: E402

# A model this small is fastest on one thread; on a shared 2-core machine more threads only spin and wait.
torch.set_num_threads(1)

LABELS = ("billing", "shipping", "spam")
TEXTS = {
    "billing": [
        "I was charged twice for order",
        "please refund the invoice",
        "my card payment failed on bill",
    ],
    "shipping": ["the parcel has not arrived, order", "where is my delivery", "the courier lost package"],
    "spam": ["win a free prize now, code", "cheap pills, click the link", "you are our lucky winner number"],
}
N_TRAIN = 48
N_VALIDATION = 12


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run where PyTorch sees a CUDA GPU and are skipped, saying so, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """SPECIALIZE_HOME in a temporary folder (never ~/.cache), one thread in any subprocess."""
    home = tmp_path_factory.mktemp("specialize-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECIALIZE_HOME", str(home))
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        mp.setenv("OMP_NUM_THREADS", "1")
        yield home


@pytest.fixture(autouse=True)
def fresh_answer_memo(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> pathlib.Path:
    """No base-model answers kept from another test (`evaluate.memo`): each test evaluates as on a new machine,
    and one that evaluates twice sees its own first run kept."""
    answers = tmp_path_factory.mktemp("answers")
    monkeypatch.setenv("SPECIALIZE_ANSWERS", str(answers))
    return answers


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A tiny Llama chat model with a ChatML tokenizer, built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-chat")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: pathlib.Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def chat_row(user: str, assistant: str, label: str | None = None, **extra: Any) -> dict[str, Any]:
    """One chat JSONL row: a user turn and the assistant's answer, with an optional label."""
    row: dict[str, Any] = {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    }
    if label is not None:
        row["label"] = label
    row.update(extra)
    return row


def write_jsonl(path: pathlib.Path, rows: list[Any]) -> pathlib.Path:
    """Write rows as JSONL; a str row is written verbatim (for malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def classification_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    """`n` short, distinct 3-label examples; row i has label LABELS[i % 3]."""
    rows = []
    for i in range(start, start + n):
        label = LABELS[i % len(LABELS)]
        text = f"{TEXTS[label][(i // len(LABELS)) % len(TEXTS[label])]} {i}"
        rows.append(chat_row(f"Label this message: {text}", label, label))
    return rows


@dataclass(frozen=True)
class ChatDataset:
    train: pathlib.Path
    validation: pathlib.Path
    n_train: int
    n_validation: int
    labels: tuple[str, ...]


def write_chat_dataset(directory: pathlib.Path) -> ChatDataset:
    """48 training and 12 validation rows of a 3-label task, no duplicates or overlap, in directory/data."""
    train = write_jsonl(directory / "data" / "train.jsonl", classification_rows(N_TRAIN))
    validation = write_jsonl(
        directory / "data" / "validation.jsonl", classification_rows(N_VALIDATION, start=1000)
    )
    return ChatDataset(train, validation, N_TRAIN, N_VALIDATION, LABELS)


@pytest.fixture
def chat_dataset(tmp_path: pathlib.Path) -> ChatDataset:
    """`write_chat_dataset` in tmp_path/data."""
    return write_chat_dataset(tmp_path)


@pytest.fixture(name="write_jsonl")
def write_jsonl_fixture() -> Callable[[pathlib.Path, list[Any]], pathlib.Path]:
    """`write_jsonl(path, rows)`: dict rows as JSON lines, str rows verbatim (for malformed lines)."""
    return write_jsonl


@pytest.fixture(name="chat_row")
def chat_row_fixture() -> Callable[..., dict[str, Any]]:
    """`chat_row(user, assistant, label=None, **extra)`: one chat JSONL row."""
    return chat_row


ConfigFactory = Callable[..., pathlib.Path]


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def write_run_config(
    directory: pathlib.Path, model_dir: pathlib.Path, filename: str = "run.yaml", **changes: Any
) -> pathlib.Path:
    """Write a run YAML into `directory`; keyword arguments are merged section by section into the defaults.

    Data paths are `data/train.jsonl` and `data/validation.jsonl` relative to the config's folder (as
    `write_chat_dataset` writes them), `runs_dir` is directory/runs.
    """
    doc = {
        "name": "tiny",
        "base_model": str(model_dir),
        "runs_dir": str(directory / "runs"),
        "data": {"train": "data/train.jsonl", "validation": "data/validation.jsonl"},
        "train": {"max_steps": 3, "batch_size": 4},
        "eval": {"max_examples": 8},
    }
    path = directory / filename
    path.write_text(yaml.safe_dump(_merge(doc, changes), sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def config_factory(
    tmp_path: pathlib.Path, tiny_model_dir: pathlib.Path, chat_dataset: ChatDataset
) -> ConfigFactory:
    """`write_run_config` into tmp_path, next to `chat_dataset`, with the tiny model as base."""

    def write(filename: str = "run.yaml", **changes: Any) -> pathlib.Path:
        return write_run_config(tmp_path, tiny_model_dir, filename, **changes)

    return write


@pytest.fixture
def run_config(config_factory: ConfigFactory) -> pathlib.Path:
    """The default run YAML: tiny model, 3 steps of batch 4, 8 evaluation examples."""
    return config_factory()


@dataclass(frozen=True)
class CompletedRun:
    """What `specialize run CONFIG` printed and left behind."""

    code: int
    out: str
    err: str
    config: RunConfig
    run_dir: RunDir

    @property
    def registry(self) -> Registry:
        return Registry(self.config.registry_url)


def only_run_dir(runs_dir: pathlib.Path) -> RunDir:
    """The one run in `runs_dir`."""
    (root,) = [p for p in runs_dir.iterdir() if p.name != "registry.db"]
    return RunDir(root)


FinishRun = Callable[..., CompletedRun]


@pytest.fixture(scope="session")
def finish_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: pathlib.Path) -> FinishRun:
    """`finish_run(**changes)`: a finished `specialize run` of the tiny model on `write_chat_dataset`.

    Each call makes a folder of its own with the data, a config (`changes` merged as in `write_run_config`) and
    its runs_dir, and runs the CLI in-process; for module- or session-scoped fixtures that need a finished run.
    """
    from specialize.cli.main import main

    def finish(**changes: Any) -> CompletedRun:
        root = tmp_path_factory.mktemp("finished-run")
        write_chat_dataset(root)
        config_path = write_run_config(root, tiny_model_dir, **changes)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--quiet", "run", str(config_path)])
        assert code == 0, err.getvalue()
        config = load_config(config_path)
        return CompletedRun(code, out.getvalue(), err.getvalue(), config, only_run_dir(config.runs_dir))

    return finish
