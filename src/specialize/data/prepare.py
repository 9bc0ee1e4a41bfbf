"""The data stage: validate, scrub, clean, split and audit; `prepare_data` writes it, `check_data` only reports.

Both run the same cleaning, in this order, so that `specialize data check` shows exactly what a run would do:
system prompt -> personal data (report, mask or drop) -> exact duplicates -> length in tokens (too short, too
long; long plain-text documents are cut into chunks instead) -> exact and group leakage into validation -> near
duplicates and near leakage (MinHash) -> split (grouped, stratified by label, seeded) when there is no validation
file -> optional sample. Every row removed on the way goes to `rejects.jsonl` with its kind and reason; none is
dropped silently. Validation rows are never removed for leakage: the training copy goes, so scores stay comparable.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.config import DataConfig, RunConfig, load_config, save_resolved
from specialize.data.audit import build_audit
from specialize.data.dedupe import near_duplicates, normalise, shingles
from specialize.data.load import Example, Loaded, empty_file, raise_problems, read_examples
from specialize.data.pii import PiiScanner
from specialize.data.split import group_split, seeded_sample, stratified_split
from specialize.data.template import with_system
from specialize.data.tokens import TokenCounter, counter_for_check, counter_for_tokenizer
from specialize.errors import DataError
from specialize.runs import Registry, RunDir, new_run_id, write_atomic

PII_LISTED = 20
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


@dataclass
class _Cleaned:
    train: list[Example]
    validation: list[Example]
    rejects: list[dict[str, Any]] = field(default_factory=list)
    lengths: dict[int, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    over_context: list[str] = field(default_factory=list)


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
    cleaned = _clean(config, train, validation, counter, seed)
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
    cleaned = _clean(config, train, val, counter, seed)
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


def _check_method(config: RunConfig, loaded: tuple[list[Example], list[Example] | None]) -> None:
    """DPO learns from pairs: say so before a run exists, not at its first training step."""
    if config.train.method != "dpo":
        return
    for example in [*loaded[0], *(loaded[1] or [])]:
        if example.kind != "preference":
            raise DataError(
                f"{example.where}: train.method dpo needs preference pairs (prompt, chosen, rejected); this row "
                "has no rejected answer. Use train.method sft for chat data"
            )


def prepare_run(config: RunConfig, out_dir: Path | None = None) -> tuple[PreparedData, str | None]:
    """`specialize data prepare`: the data stage of a run, alone.

    Without `out_dir` a run is created as `specialize run` would (directory, resolved config, registry row with
    status `prepared`); with it, only the data files are written there. Returns the prepared data and the run id.
    """
    from transformers import AutoTokenizer

    from specialize.models import check_model, resolve_model
    from specialize.train.placement import choose_placement

    check_model(config.base_model)
    choose_placement(config.train.device, config.train.precision)  # a GPU asked for but absent fails here
    loaded = load_examples(config.data)
    _check_method(config, loaded)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.base_model))
    if out_dir is not None:
        return prepare_data(config.data, tokenizer, out_dir, config.seed, loaded), None
    run_id = new_run_id(config.name)
    staging = RunDir.create(config.runs_dir, f".{run_id}.partial")
    try:
        prepared = prepare_data(config.data, tokenizer, staging.data, config.seed, loaded)
        save_resolved(config, staging.config)
    except BaseException:
        shutil.rmtree(staging.root, ignore_errors=True)
        raise
    run = RunDir(staging.root.rename(config.runs_dir / run_id))
    data = dataclasses.replace(prepared, directory=run.data)
    registry = Registry(config.registry_url)
    registry.create_run(run, config.name, config.base_model, config.model_dump(mode="json"))
    registry.log_metrics(
        run_id,
        "data",
        {
            "train_examples": data.n_train,
            "validation_examples": data.n_validation,
            "rejected_examples": data.n_rejected,
        },
    )
    for kind, path in (
        ("train_split", data.train_path),
        ("validation_split", data.validation_path),
        ("rejects", data.rejects_path),
        ("audit", data.audit_path),
    ):
        registry.add_artifact(run_id, kind, path)
    registry.finish_run(run_id, "prepared")
    return data, run_id


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


def _clean(
    config: DataConfig,
    train: list[Example],
    validation: list[Example] | None,
    counter: TokenCounter,
    seed: int,
) -> _Cleaned:
    splits = {
        "train": [_own_copy(e, config.system_prompt) for e in train],
        "validation": [_own_copy(e, config.system_prompt) for e in validation or []],
    }
    out = _Cleaned([], [])
    _scrub(config, splits, out)
    if config.dedupe.exact:
        for split in splits:
            splits[split] = _drop_exact(splits[split], split, out)
    for split in splits:
        splits[split] = _by_length(config, splits[split], split, counter, out)
    if validation is not None:
        splits["train"] = _drop_leaks(config, splits["train"], splits["validation"], out)
    if config.dedupe.near:
        _drop_near(config, splits, out)
    out.train, out.validation = splits["train"], splits["validation"]
    if validation is None:
        out.train, out.validation = _split(config, out.train, seed, out)
    else:
        out.stats["split"] = {"method": "validation file", "seed": seed}
    if config.max_per_label is not None:
        out.train = _cap_labels(config.max_per_label, out.train, seed, out)
    if config.max_train_examples is not None and len(out.train) > config.max_train_examples:
        sampled = seeded_sample(out.train, config.max_train_examples, seed)
        chosen = {id(e) for e in sampled}
        for ex in out.train:
            if id(ex) not in chosen:
                _reject(
                    out,
                    ex,
                    "train",
                    "not_sampled",
                    f"not sampled (data.max_train_examples={config.max_train_examples})",
                )
        out.train = sampled
    return out


def _cap_labels(cap: int, train: list[Example], seed: int, out: _Cleaned) -> list[Example]:
    """Keep at most `cap` training examples of each label: a majority class no longer drowns the rest."""
    by_label: dict[str | None, list[Example]] = {}
    for ex in train:
        by_label.setdefault(ex.label, []).append(ex)
    kept: set[int] = set()
    for label, group in by_label.items():
        chosen = group if label is None or len(group) <= cap else seeded_sample(group, cap, seed)
        kept.update(id(e) for e in chosen)
    for ex in train:
        if id(ex) not in kept:
            _reject(out, ex, "train", "over_label_cap", f"label {ex.label!r} over data.max_per_label={cap}")
    return [ex for ex in train if id(ex) in kept]


def _own_copy(ex: Example, system_prompt: str | None) -> Example:
    """A copy cleaning may change (mask, prefix) without touching the caller's examples."""
    messages = with_system(ex.messages, system_prompt) if ex.text is None else []
    return dataclasses.replace(
        ex,
        messages=[dict(m) for m in messages],
        extra=dict(ex.extra),
        rejected=[dict(m) for m in ex.rejected] if ex.rejected is not None else None,
    )


def _scrub(config: DataConfig, splits: dict[str, list[Example]], out: _Cleaned) -> None:
    scanner = PiiScanner(config.pii.names)
    by_kind: Counter[str] = Counter()
    rows = 0
    locations: list[str] = []
    for split, examples in splits.items():
        kept = []
        for ex in examples:
            found = _mask_example(ex, scanner)
            if not found:
                kept.append(ex)
                continue
            rows += 1
            by_kind.update(found)
            if len(locations) < PII_LISTED:
                locations.append(f"{ex.where}: {', '.join(sorted(found))}")
            if config.pii.mode == "drop":
                kinds = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(found.items()))
                # The copy in rejects.jsonl is masked too: a run directory should hold no personal data.
                _reject(
                    out, _masked(ex, scanner), split, "pii", f"personal data ({kinds}); data.pii.mode is drop"
                )
            elif config.pii.mode == "mask":
                kept.append(_masked(ex, scanner))
            else:
                kept.append(ex)
        splits[split] = kept
    out.stats["pii"] = {
        "mode": config.pii.mode,
        "names": config.pii.names,
        "rows": rows,
        "by_kind": dict(sorted(by_kind.items())),
        "locations": locations,
    }


def _texts(ex: Example) -> list[str]:
    texts = [m["content"] for m in ex.messages + (ex.rejected or [])]
    texts += [ex.text] if ex.text is not None else []
    return texts + [v for v in ex.extra.values() if isinstance(v, str)]


def _mask_example(ex: Example, scanner: PiiScanner) -> Counter[str]:
    return Counter(f.kind for text in _texts(ex) for f in scanner.find(text))


def _masked(ex: Example, scanner: PiiScanner) -> Example:
    return dataclasses.replace(
        ex,
        messages=[{**m, "content": scanner.mask(m["content"])} for m in ex.messages],
        rejected=[{**m, "content": scanner.mask(m["content"])} for m in ex.rejected]
        if ex.rejected
        else ex.rejected,
        text=scanner.mask(ex.text) if ex.text is not None else None,
        extra={k: scanner.mask(v) if isinstance(v, str) else v for k, v in ex.extra.items()},
    )


def _key(ex: Example) -> str:
    parts: list[Any] = [
        [(m["role"], normalise(m["content"])) for m in ex.messages + (ex.rejected or [])],
        ex.label,
    ]
    return json.dumps([normalise(ex.text), parts] if ex.text is not None else parts)


def _drop_exact(examples: list[Example], split: str, out: _Cleaned) -> list[Example]:
    seen: dict[str, str] = {}
    kept = []
    for ex in examples:
        key = _key(ex)
        if key in seen:
            _reject(
                out,
                ex,
                split,
                "duplicate",
                f"duplicate of {seen[key]} (same text after normalising case and spaces)",
            )
            continue
        seen[key] = ex.where
        kept.append(ex)
    return kept


def _by_length(
    config: DataConfig, examples: list[Example], split: str, counter: TokenCounter, out: _Cleaned
) -> list[Example]:
    examples = _chunk_texts(examples, config.max_tokens, counter, out)
    context = counter.context_length
    limit = min(config.max_tokens, context) if context else config.max_tokens
    which = (
        "data.max_tokens" if limit == config.max_tokens else f"the {context}-token context of {counter.model}"
    )
    kept = []
    for ex, n in zip(examples, counter.count(examples), strict=True):
        if context and n > context:
            out.over_context.append(
                f"{ex.where}: {n} tokens once templated, longer than the {context}-token "
                f"context of {counter.model}; shorten or split the example"
            )
        if n > limit:
            _reject(
                out, ex, split, "too_long", f"{n} tokens once templated, over the limit of {limit} ({which})"
            )
        elif n < config.min_tokens:
            _reject(
                out,
                ex,
                split,
                "too_short",
                f"{n} tokens once templated, under data.min_tokens ({config.min_tokens})",
            )
        else:
            out.lengths[id(ex)] = n
            kept.append(ex)
    return kept


def _chunk_texts(
    examples: list[Example], max_tokens: int, counter: TokenCounter, out: _Cleaned
) -> list[Example]:
    texts = [e for e in examples if e.text is not None]
    if not texts:
        return examples
    long = {id(e) for e, n in zip(texts, counter.count(texts), strict=True) if n > max_tokens}
    result = []
    for ex in examples:
        if id(ex) not in long:
            result.append(ex)
            continue
        pieces = counter.split_text(ex.text or "", max_tokens)
        out.stats["chunked"] = out.stats.get("chunked", 0) + 1
        result += [
            dataclasses.replace(ex, text=piece, extra={**ex.extra, "chunk": i})
            for i, piece in enumerate(pieces)
        ]
    return result


def _drop_leaks(
    config: DataConfig, train: list[Example], validation: list[Example], out: _Cleaned
) -> list[Example]:
    """Training rows that repeat a validation row, or share its group, would inflate every validation score."""
    in_validation = {_key(ex): ex.where for ex in validation}
    groups = {ex.group: ex.where for ex in validation if ex.group is not None}
    kept = []
    for ex in train:
        other = in_validation.get(_key(ex))
        if other:
            _reject(out, ex, "train", "leakage", f"also in validation at {other} (train/validation leakage)")
        elif ex.group is not None and ex.group in groups:
            _reject(
                out,
                ex,
                "train",
                "group_leakage",
                f"group '{ex.group}' ({config.group_field}) is also in "
                f"validation (e.g. {groups[ex.group]}); a group stays in one split",
            )
        else:
            kept.append(ex)
    return kept


def _drop_near(config: DataConfig, splits: dict[str, list[Example]], out: _Cleaned) -> None:
    ordered = [("validation", e) for e in splits["validation"]] + [("train", e) for e in splits["train"]]
    sets = [shingles(_plain(e)) for _, e in ordered]
    matches = near_duplicates(sets, config.dedupe.threshold, labels=[e.label for _, e in ordered])
    removed = set()
    for m in matches:
        split, ex = ordered[m.index]
        other_split, other = ordered[m.of]
        how = (
            f"(Jaccard similarity {m.similarity:.2f} of word 3-grams, shared boilerplate ignored; "
            f"data.dedupe.threshold {config.dedupe.threshold:g})"
        )
        if split == "train" and other_split == "validation":
            _reject(out, ex, split, "near_leakage", f"nearly the same as validation {other.where} {how}")
        else:
            _reject(out, ex, split, "near_duplicate", f"nearly the same as {other.where} {how}")
        removed.add(id(ex))
    for split in splits:
        splits[split] = [e for e in splits[split] if id(e) not in removed]


def _plain(ex: Example) -> str:
    return (
        ex.text if ex.text is not None else "\n".join(m["content"] for m in ex.messages + (ex.rejected or []))
    )


def _split(
    config: DataConfig, examples: list[Example], seed: int, out: _Cleaned
) -> tuple[list[Example], list[Example]]:
    labels = [e.label for e in examples]
    info: dict[str, Any] = {"seed": seed, "validation_fraction": config.validation_fraction}
    if config.group_field:
        train, validation = group_split(
            examples, labels, [e.group or "" for e in examples], config.validation_fraction, seed
        )
        info.update(
            method=f"grouped by '{config.group_field}'" + (", stratified by label" if any(labels) else ""),
            groups={"train": len({e.group for e in train}), "validation": len({e.group for e in validation})},
        )
    else:
        train, validation = stratified_split(examples, labels, config.validation_fraction, seed)
        info["method"] = "stratified by label" if any(labels) else "random"
    out.stats["split"] = info
    return train, validation


def _reject(out: _Cleaned, ex: Example, split: str, kind: str, reason: str) -> None:
    out.rejects.append({"split": split, "kind": kind, "reason": reason, **ex.to_json()})


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
    config: DataConfig, cleaned: _Cleaned, counter: TokenCounter, files: dict[str, Any]
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
