"""The base model's answers kept across runs, so that a run that changes only training does not score the base
systems again.

Every run evaluates the base model zero-shot, few-shot and with retrieval next to its fine-tune. A user iterating
on training settings, or a study's tuned and default runs, ask the base model the same questions each time: on
banking77 those three systems are about 7 minutes of a run's evaluation. Their outputs depend only on the model's
weights, the prompts and what is scored, so they are kept under `$SPECIALIZE_HOME/answers/` (or
`$SPECIALIZE_ANSWERS`) keyed by a hash of exactly that: the base model's files (names, sizes, modification
times), the device and dtype it runs in, the library versions and specialize's own source, and the inputs of the
call. Any change to one of these is a different key, never a stale answer. Fine-tuned systems are not kept: their
adapter is new in every run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from specialize.runs import write_atomic

log = logging.getLogger(__name__)

T = TypeVar("T")


def answers_dir() -> Path:
    """`$SPECIALIZE_ANSWERS`, else `answers/` beside the model cache (`$SPECIALIZE_HOME`)."""
    from specialize.models import cache_dir

    if os.environ.get("SPECIALIZE_ANSWERS"):
        return Path(os.environ["SPECIALIZE_ANSWERS"])
    return cache_dir().parent / "answers"


@functools.cache
def _code_version() -> str:
    """specialize's own source and the versions of the libraries that compute answers: a fix to any of them
    changes what a model answers or how it is scored."""
    import tokenizers
    import torch
    import transformers

    digest = hashlib.sha256(
        f"{torch.__version__} {transformers.__version__} {tokenizers.__version__}".encode()
    )
    package = Path(__file__).resolve().parent.parent
    for source in sorted(package.rglob("*.py")):
        digest.update(str(source.relative_to(package)).encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _model_version(model_path: Path) -> str:
    """The model directory's files by name, size and modification time (hashing 500 MB of weights would cost
    more than some evaluations)."""
    digest = hashlib.sha256(str(model_path.resolve()).encode())
    for path in sorted(p for p in model_path.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(model_path)} {stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class AnswerMemo:
    """The kept outputs of one base model, as it runs here (device and dtype)."""

    def __init__(self, model_path: Path, model: Any) -> None:
        parameter = next(model.parameters())
        self.model = hashlib.sha256(
            f"{_model_version(model_path)} {_code_version()} {parameter.device.type} {parameter.dtype}".encode()
        ).hexdigest()

    def get(
        self,
        what: str,
        inputs: Any,
        compute: Callable[[], T],
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
    ) -> tuple[T, bool]:
        """`compute()`'s result for `inputs` (JSON-able), from an earlier run when one kept it; and whether it did.

        A kept file that cannot be read (a crash mid-write leaves none: files are written, then renamed) is
        computed again."""
        key = hashlib.sha256(
            json.dumps([self.model, what, inputs], sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()
        path = answers_dir() / f"{what}-{key[:40]}.json"
        if path.is_file():
            try:
                return decode(json.loads(path.read_text(encoding="utf-8"))), True
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("kept answers %s unreadable (%s); computing them again", path, exc)
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(encode(value), ensure_ascii=False))
        return value, False
