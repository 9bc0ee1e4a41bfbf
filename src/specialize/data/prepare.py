"""The data stage: validate, scrub, clean, split and audit; `prepare_data` writes it, `check_data` only reports.

Reads the files of the `data:` section (`load_examples`), cleans them (`clean.py`, the same steps for both) and
writes `train.jsonl`, `validation.jsonl`, `rejects.jsonl` and `audit.json` into the folder it is given. It neither
creates runs nor reads other sections of the config: `pipeline.py` does both and hands it what it needs.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.config import DataConfig, load_config
from specialize.data.audit import build_audit
from specialize.data.clean import Cleaned, clean
from specialize.data.load import Example, Loaded, empty_file, raise_problems, read_examples
from specialize.data.tokens import TokenCounter, counter_for_check, counter_for_tokenizer
from specialize.errors import DataError
from specialize.runs import write_atomic

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".jsonl.gz")


@dataclass(frozen=True)
class PreparedData:
    """The prepared splits of a run (files in `directory`) and what the audit found."""

    directory: Path
    labels: list[str] | None
    n_train: int
    n_validation: int
    n_rejected: int

    @classmethod
    def load(cls, directory: Path) -> PreparedData:
        """The prepared data of an existing run, read back from its `data/` folder."""
        train = read_prepared(directory / "train.jsonl")
        labels = sorted({r["label"] for r in train if r.get("label") is not None}) or None
        n_validation = len(read_prepared(directory / "validation.jsonl"))
        return cls(
            directory, labels, len(train), n_validation, len(read_prepared(directory / "rejects.jsonl"))
        )

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


@dataclass(frozen=True)
class DataCheck:
    """What `check_data` found: the audit a run would write, and the problems that would stop it."""

    audit: dict[str, Any]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def load_examples(config: DataConfig) -> tuple[list[Example], list[Example] | None]:
    """Read and validate the configured files, raising one DataError that lists every bad line of both."""
    loaded = [_read(path, config) if path is not None else None for path in (config.train, config.validation)]
    problems = [p for result in loaded if result for p in result.problems]
    for result in loaded:
        if result is not None and not result.examples and not result.problems:
            problems.append(empty_file(result.path))
    raise_problems(problems, " and ".join(str(r.path) for r in loaded if r))
    train, validation = loaded
    assert train is not None  # config.train is required
    return train.examples, validation.examples if validation is not None else None


def prepare_data(
    config: DataConfig,
    tokenizer: Any,
    out_dir: Path,
    seed: int = 0,
    loaded: tuple[list[Example], list[Example] | None] | None = None,
) -> PreparedData:
    """Validate, scrub, clean, split and audit the data of a run.

    Args:
        config: the `data:` section.
        tokenizer: the base model's tokenizer; lengths are counted in its tokens once templated.
        out_dir: the run's `data/` directory.
        seed: seed of the split and of any sampling.
        loaded: examples already read by `load_examples` (the pipeline reads them before creating a run).

    Returns:
        Paths of the written files and the counts.

    Raises:
        DataError: invalid rows (all listed), or nothing left after cleaning (rejects.jsonl is written first).
    """
    train, validation = loaded or load_examples(config)
    counter = counter_for_tokenizer(tokenizer)
    cleaned = clean(config, train, validation, counter, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = PreparedData(out_dir, None, len(cleaned.train), len(cleaned.validation), len(cleaned.rejects))
    _write_jsonl(prepared.rejects_path, cleaned.rejects)
    if not cleaned.train or not cleaned.validation:
        raise DataError(
            f"after cleaning, {len(cleaned.train)} training and {len(cleaned.validation)} validation examples "
            f"remain; see {prepared.rejects_path} for why rows were removed"
        )
    labels = sorted({e.label for e in cleaned.train if e.label is not None}) or None
    prepared = dataclasses.replace(prepared, labels=labels)
    _write_jsonl(prepared.train_path, [e.to_json() for e in cleaned.train])
    _write_jsonl(prepared.validation_path, [e.to_json() for e in cleaned.validation])
    files = {
        "train": _file_info(config.train, train),
        "validation": _file_info(config.validation, validation),
    }
    report = _audit(config, cleaned, counter, files)
    write_atomic(prepared.audit_path, json.dumps(report, indent=2, ensure_ascii=False))
    return prepared


def check_data(
    target: Path,
    *,
    validation: Path | None = None,
    base_model: str | None = None,
    overrides: list[str] | None = None,
) -> DataCheck:
    """Validate and audit data without writing anything or downloading a model.

    Args:
        target: a data file, a folder holding `train.*` (and `validation.*`), or a run YAML (its `data:` section).
        validation: a validation file, for a file target.
        base_model: whose tokenizer counts tokens; default the config's, else the embedded model. Used only when
            it is on disk; otherwise tokens are estimated, and the audit says so.
        overrides: `key=value` settings of the data section, e.g. `pii.mode=mask` or `format=alpaca`.

    Returns:
        The audit and every problem (`file:line: what; fix`); problems mean a run would stop.
    """
    config, base_model, seed = _check_config(Path(target), validation, base_model, overrides or [])
    loaded = [_read(path, config) if path is not None else None for path in (config.train, config.validation)]
    problems = [p for result in loaded if result for p in result.problems]
    # The verdict of `specialize run` on the same files: empty files and nothing left after cleaning stop a run,
    # rows over the context do not (they are rejected as too long, like any row over data.max_tokens).
    problems += [empty_file(r.path) for r in loaded if r is not None and not r.examples and not r.problems]
    train = loaded[0].examples if loaded[0] else []
    val = loaded[1].examples if loaded[1] is not None else None
    counter = counter_for_check(base_model)
    cleaned = clean(config, train, val, counter, seed)
    if not problems and (not cleaned.train or not cleaned.validation):
        problems.append(
            f"after cleaning, {len(cleaned.train)} training and {len(cleaned.validation)} validation examples "
            "remain; the audit's rejected rows say why rows were removed"
        )
    files = {
        "train": _file_info(config.train, train, loaded[0]),
        "validation": _file_info(config.validation, val, loaded[1]),
    }
    report = _audit(config, cleaned, counter, files)
    if cleaned.over_context:
        counted = "" if counter.exact else " (estimated counts; check again with the model cached)"
        report["warnings"].append(
            f"{len(cleaned.over_context)} example(s) longer than the model's context{counted} will be rejected: "
            + "; ".join(cleaned.over_context[:3])
        )
    return DataCheck(report, problems)


def read_prepared(path: Path) -> list[dict[str, Any]]:
    """Rows of a prepared split, as written by `prepare_data`."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _read(path: Path, config: DataConfig) -> Loaded:
    return read_examples(
        path,
        format=config.format,
        columns={str(k): v for k, v in config.columns.items()},
        label_field=config.label_field,
        labels=config.labels,
        group_field=config.group_field,
    )


def _check_config(
    target: Path, validation: Path | None, base_model: str | None, overrides: list[str]
) -> tuple[DataConfig, str | None, int]:
    data_overrides = [o if o.startswith("data.") else f"data.{o}" for o in overrides]
    if target.suffix.lower() in (".yaml", ".yml"):
        run = load_config(target, data_overrides)
        return run.data, base_model or run.base_model, run.seed
    if target.is_dir():
        found = {
            stem: next(
                (target / f"{stem}{s}" for s in DATA_SUFFIXES if (target / f"{stem}{s}").is_file()), None
            )
            for stem in ("train", "validation", "valid", "val", "dev")
        }
        if found["train"] is None:
            raise DataError(
                f"{target} holds no train file (train.jsonl, train.csv, ...); name the file instead"
            )
        validation = validation or next((p for stem, p in found.items() if stem != "train" and p), None)
        target = found["train"]
    settings = [f"data.train={json.dumps(str(target))}"]
    if validation is not None:
        settings.append(f"data.validation={json.dumps(str(validation))}")
    return load_config(None, settings + data_overrides).data, base_model, 0


def _file_info(
    path: Path | None, examples: list[Example] | None, loaded: Loaded | None = None
) -> dict[str, Any] | None:
    if path is None:
        return None
    info: dict[str, Any] = {"path": str(path), "examples": len(examples or [])}
    if loaded is not None:
        info.update(format=loaded.format, file_type=loaded.file_type, invalid_rows=len(loaded.problems))
        if loaded.notes:
            info["notes"] = {"count": len(loaded.notes), "first": loaded.notes[:5]}
    else:
        info["format"] = Counter(e.format for e in examples or []).most_common(1)[0][0] if examples else None
    return info


def _audit(
    config: DataConfig, cleaned: Cleaned, counter: TokenCounter, files: dict[str, Any]
) -> dict[str, Any]:
    return build_audit(
        config,
        cleaned.train,
        cleaned.validation,
        cleaned.rejects,
        cleaned.lengths,
        cleaned.stats,
        counter,
        files,
    )


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
