"""The cleaning of the data stage, shared by `prepare_data` (which writes it) and `check_data` (which only reports).

The steps run in this order, so that `specialize data check` shows exactly what a run would do: system prompt ->
personal data (report, mask or drop) -> exact duplicates -> length in tokens (too short, too long; long plain-text
documents are cut into chunks instead) -> exact and group leakage into validation -> near duplicates and near
leakage (MinHash) -> split (grouped, stratified by label, seeded) when there is no validation file -> optional
sample. Every row removed on the way goes to the rejects with its kind and reason; none is dropped silently.
Validation rows are never removed for leakage: the training copy goes, so scores stay comparable.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from specialize.config import DataConfig
from specialize.data.dedupe import near_duplicates, normalise, shingles
from specialize.data.load import Example
from specialize.data.pii import PiiScanner
from specialize.data.split import group_split, seeded_sample, stratified_split
from specialize.data.template import with_system
from specialize.data.tokens import TokenCounter

PII_LISTED = 20


@dataclass
class Cleaned:
    """What cleaning kept of each split, what it removed and why, and what it counted on the way."""

    train: list[Example]
    validation: list[Example]
    rejects: list[dict[str, Any]] = field(default_factory=list)
    lengths: dict[int, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    over_context: list[str] = field(default_factory=list)


def clean(
    config: DataConfig,
    train: list[Example],
    validation: list[Example] | None,
    counter: TokenCounter,
    seed: int,
) -> Cleaned:
    """Run every cleaning step, in the order of the module docstring, over copies of the examples."""
    splits = {
        "train": [_own_copy(e, config.system_prompt) for e in train],
        "validation": [_own_copy(e, config.system_prompt) for e in validation or []],
    }
    out = Cleaned([], [])
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


def _cap_labels(cap: int, train: list[Example], seed: int, out: Cleaned) -> list[Example]:
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


def _scrub(config: DataConfig, splits: dict[str, list[Example]], out: Cleaned) -> None:
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
        ex.desirable,
    ]
    return json.dumps([normalise(ex.text), parts] if ex.text is not None else parts)


def _drop_exact(examples: list[Example], split: str, out: Cleaned) -> list[Example]:
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
    config: DataConfig, examples: list[Example], split: str, counter: TokenCounter, out: Cleaned
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
    examples: list[Example], max_tokens: int, counter: TokenCounter, out: Cleaned
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
    config: DataConfig, train: list[Example], validation: list[Example], out: Cleaned
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


def _drop_near(config: DataConfig, splits: dict[str, list[Example]], out: Cleaned) -> None:
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
    config: DataConfig, examples: list[Example], seed: int, out: Cleaned
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


def _reject(out: Cleaned, ex: Example, split: str, kind: str, reason: str) -> None:
    out.rejects.append({"split": split, "kind": kind, "reason": reason, **ex.to_json()})
