"""Data preparation: load, validate, clean, split, template, audit.

Reads the files named in the `data:` section, writes `data/train.jsonl`, `data/validation.jsonl`,
`data/rejects.jsonl` (every row removed, with its reason: nothing is dropped silently) and `data/audit.json` into
the run directory. Run as the first stage of `specialize run`, or alone with `specialize data check`.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.config import DataConfig
from specialize.data.load import Example, read_chat_jsonl
from specialize.data.split import seeded_sample, stratified_split
from specialize.data.template import encode_conversation, render_prompt, with_system
from specialize.errors import DataError
from specialize.runs import write_atomic

__all__ = [
    "Example",
    "PreparedData",
    "encode_conversation",
    "load_examples",
    "prepare_data",
    "read_chat_jsonl",
    "read_prepared",
    "render_prompt",
]


@dataclass(frozen=True)
class PreparedData:
    """The prepared splits of a run (files in `directory`) and what the audit found."""

    directory: Path
    labels: list[str] | None
    n_train: int
    n_validation: int
    n_rejected: int

    @property
    def train_path(self) -> Path:
        return self.directory / "train.jsonl"

    @property
    def validation_path(self) -> Path:
        return self.directory / "validation.jsonl"

    @property
    def rejects_path(self) -> Path:
        return self.directory / "rejects.jsonl"

    @property
    def audit_path(self) -> Path:
        return self.directory / "audit.json"

    @property
    def task(self) -> str:
        return "classification" if self.labels else "generation"


def load_examples(config: DataConfig) -> tuple[list[Example], list[Example] | None]:
    """Read and validate the configured files, raising one DataError that lists every bad line of both."""
    problems: list[str] = []
    loaded: list[list[Example] | None] = []
    for path in (config.train, config.validation):
        if path is None:
            loaded.append(None)
            continue
        try:
            loaded.append(read_chat_jsonl(path, config.label_field))
        except DataError as exc:
            problems += exc.problems or [str(exc)]
            loaded.append(None)
    if problems:
        raise DataError("\n".join(problems), problems)
    train, validation = loaded
    assert train is not None  # read_chat_jsonl raised otherwise
    return train, validation


def prepare_data(
    config: DataConfig, tokenizer: Any, out_dir: Path, seed: int = 0,
    loaded: tuple[list[Example], list[Example] | None] | None = None,
) -> PreparedData:
    """Validate, clean, split and audit the data of a run.

    Args:
        config: the `data:` section.
        tokenizer: the base model's tokenizer; lengths are counted in its tokens once templated.
        out_dir: the run's `data/` directory.
        seed: seed of the split and of any sampling.
        loaded: examples already read by `load_examples` (the pipeline reads them before creating a run).

    Returns:
        Paths of the written files and the counts.
    """
    train, validation = loaded or load_examples(config)
    for ex in train + (validation or []):
        ex.messages = with_system(ex.messages, config.system_prompt)
    rejects: list[dict[str, Any]] = []
    max_tokens = min(config.max_tokens, getattr(tokenizer, "model_max_length", config.max_tokens))
    lengths: dict[int, int] = {}
    kept_train = _filter(train, "train", tokenizer, max_tokens, rejects, lengths, seen={})
    seen_val: dict[str, str] = {}
    kept_val = None
    if validation is not None:
        kept_val = _filter(validation, "validation", tokenizer, max_tokens, rejects, lengths, seen_val)
        # A training example that also sits in validation would inflate every validation score.
        kept_train = _drop_leaks(kept_train, seen_val, rejects)
    else:
        kept_train, kept_val = stratified_split(
            kept_train, [e.label for e in kept_train], config.validation_fraction, seed
        )
    if config.max_train_examples is not None and len(kept_train) > config.max_train_examples:
        sampled = seeded_sample(kept_train, config.max_train_examples, seed)
        chosen = {id(e) for e in sampled}
        for ex in kept_train:
            if id(ex) not in chosen:
                rejects.append(_reject(ex, "train", "not_sampled", f"not sampled (data.max_train_examples={config.max_train_examples})"))
        kept_train = sampled
    if not kept_train or not kept_val:
        raise DataError(
            f"after cleaning, {len(kept_train)} training and {len(kept_val)} validation examples remain; "
            f"see {out_dir / 'rejects.jsonl'} for why rows were removed"
        )
    labels = sorted({e.label for e in kept_train if e.label is not None}) or None
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = PreparedData(out_dir, labels, len(kept_train), len(kept_val), len(rejects))
    _write_jsonl(prepared.train_path, [e.to_json() for e in kept_train])
    _write_jsonl(prepared.validation_path, [e.to_json() for e in kept_val])
    _write_jsonl(prepared.rejects_path, rejects)
    audit = _audit(kept_train, kept_val, rejects, labels, lengths)
    write_atomic(prepared.audit_path, json.dumps(audit, indent=2))
    return prepared


def read_prepared(path: Path) -> list[dict[str, Any]]:
    """Rows of a prepared split, as written by `prepare_data`."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _key(ex: Example) -> str:
    return json.dumps([(m["role"], " ".join(m["content"].lower().split())) for m in ex.messages])


def _reject(ex: Example, split: str, kind: str, reason: str) -> dict[str, Any]:
    return {"split": split, "kind": kind, "reason": reason, **ex.to_json()}


def _filter(
    examples: list[Example], split: str, tokenizer: Any, max_tokens: int, rejects: list[dict[str, Any]],
    lengths: dict[int, int], seen: dict[str, str],
) -> list[Example]:
    kept = []
    for ex in examples:
        key = _key(ex)
        if key in seen:
            rejects.append(_reject(ex, split, "duplicate", f"duplicate of {seen[key]} (same text after normalising case and spaces)"))
            continue
        n_tokens = len(encode_conversation(tokenizer, ex.messages).input_ids)
        if n_tokens > max_tokens:
            rejects.append(_reject(ex, split, "too_long", f"{n_tokens} tokens once templated, over the limit of {max_tokens} (data.max_tokens or the model's context)"))
            continue
        seen[key] = f"{ex.source}:{ex.line}"
        lengths[id(ex)] = n_tokens
        kept.append(ex)
    return kept


def _drop_leaks(train: list[Example], seen_val: dict[str, str], rejects: list[dict[str, Any]]) -> list[Example]:
    kept = []
    for ex in train:
        other = seen_val.get(_key(ex))
        if other:
            rejects.append(_reject(ex, "train", "leakage", f"also in validation at {other} (train/validation leakage)"))
        else:
            kept.append(ex)
    return kept


def _audit(
    train: list[Example], validation: list[Example], rejects: list[dict[str, Any]], labels: list[str] | None,
    lengths: dict[int, int],
) -> dict[str, Any]:
    def length_stats(examples: list[Example]) -> dict[str, float]:
        values = sorted(lengths[id(e)] for e in examples)
        return {"min": values[0], "median": statistics.median(values), "p95": values[int(0.95 * (len(values) - 1))],
                "max": values[-1], "total": sum(values)}

    audit: dict[str, Any] = {
        "task": "classification" if labels else "generation",
        "counts": {"train": len(train), "validation": len(validation), "rejected": len(rejects)},
        "rejected_by_kind": dict(Counter(r["kind"] for r in rejects)),
        "tokens": {"train": length_stats(train), "validation": length_stats(validation)},
    }
    if labels:
        train_counts = Counter(e.label for e in train)
        val_counts = Counter(e.label for e in validation)
        audit["labels"] = {
            label: {"train": train_counts.get(label, 0), "validation": val_counts.get(label, 0)} for label in labels
        }
        audit["imbalance_ratio"] = max(train_counts.values()) / min(train_counts.values())
        unseen = sorted({str(e.label) for e in validation} - set(labels))
        if unseen:
            audit["validation_labels_not_in_train"] = unseen
    return audit


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
