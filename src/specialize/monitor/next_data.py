"""The inputs of a retrained child: its training and validation files, and the two sets the gate tests it on.

Reads the parent run's prepared data, the request log's feedback (`feedback.py`), new data files and a golden file;
writes, into `<parent run>/retrain/<fingerprint>/`:

- `train.jsonl`: the parent's prepared training rows, then the new rows of the same kind (conversations, pairs or
  rated answers: a data file holds one format) that the child's method learns from;
- `regression.jsonl`: the frozen regression set, the parent's validation rows (a seeded sample of
  `gate.max_examples` if set) plus the golden file's rows;
- `new.jsonl`: the new examples held out (`retrain.holdout`, stratified by label) to test parent and child on;
- `validation.jsonl`: both, the child's validation split, so the data stage removes any training row that repeats
  one of them (leakage) as it does for any run;
- `unused.jsonl` (rows the method does not learn from: pairs for SFT, ratings for anything but KTO),
  `skipped.jsonl` (feedback that gave no row, with the reason) and `inputs.json` (counts and the fingerprint).

New examples that repeat a parent row (same conversation and answer, its training or its validation split) are
dropped before anything else and counted: they are not new. The data stage then does the rest as for any run:
exact and near duplicates within the training file (the parent's rows come first, so a new near-copy is the one
removed), personal data, leakage. The fingerprint is a hash of everything written: the same parent, feedback and
files give the same folder, which is how `specialize loop` knows it has already trained that child.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.config import RunConfig
from specialize.errors import DataError
from specialize.monitor.feedback import feedback_rows
from specialize.monitor.traffic import read_exchanges
from specialize.runs import Registry, RunDir, write_atomic


@dataclass(frozen=True)
class NextData:
    """What `build_next_data` wrote, and how many rows of each kind."""

    directory: Path
    fingerprint: str
    labels: list[str] | None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Nothing new: no row added to the parent's training data, none held out to test on."""
        return not self.counts.get("train_added") and not self.counts.get("held_out")

    def nothing_new(self) -> str:
        return (
            f"nothing new to learn from for {self.directory.parent.parent.name}: no new examples in the files "
            "given, no corrections or ratings in the request log that its data does not already hold; give --data "
            "NEW.jsonl, or --feedback once users have sent feedback"
        )

    @property
    def train(self) -> Path:
        return self.directory / "train.jsonl"

    @property
    def validation(self) -> Path:
        return self.directory / "validation.jsonl"

    @property
    def regression(self) -> Path:
        return self.directory / "regression.jsonl"

    @property
    def new(self) -> Path:
        return self.directory / "new.jsonl"


def build_next_data(
    registry: Registry,
    parent: RunDir,
    config: RunConfig,
    learns_from: frozenset[str],
    feedback: bool,
    data_files: list[Path],
    golden: Path | None,
) -> NextData:
    """Write a child's input files for `parent` (whose resolved config is `config`).

    Args:
        registry: the registry whose request log holds the feedback.
        parent: the parent run's directory.
        config: the parent's config; its `monitor.retrain` and `monitor.gate` sections set the hold-out share and
            the regression sample, its `data:` section how new files are read.
        learns_from: the row kinds the child's training method learns from (`train.METHODS[method].rows`).
        feedback: take corrections and ratings from the request log (every request any run of the parent's name
            answered).
        data_files: new data files.
        golden: examples added to the regression set.

    Raises:
        DataError: a bad line in a new or golden file (all listed).
    """
    from specialize.data import read_data, read_prepared, seeded_sample, stratified_split, with_system

    system = config.data.system_prompt
    parent_train = read_prepared(parent.data / "train.jsonl")
    parent_validation = read_prepared(parent.data / "validation.jsonl")
    known = {_key(r) for r in parent_train + parent_validation}
    labels = sorted({str(r["label"]) for r in parent_train if r.get("label") is not None}) or None
    counts: dict[str, int] = {}
    gold: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    for path in data_files:
        for ex in read_data(path, label_field=config.data.label_field):
            if ex.kind == "text":
                raise DataError(
                    f"{ex.where}: plain text; retrain --data takes conversations or preference pairs"
                )
            row: dict[str, Any] = {"messages": with_system(ex.messages, system), **ex.extra}
            if ex.label is not None:
                row["label"] = ex.label
            if ex.kind == "preference":
                pairs.append({**row, "rejected": ex.rejected, "n_chosen": ex.n_chosen})
            else:
                gold.append(row)
    counts["file_rows"] = len(gold) + len(pairs)
    if labels is not None:
        labels = sorted({*labels, *(str(r["label"]) for r in gold if r.get("label") is not None)})
    feedback_pairs: list[dict[str, Any]] = []
    kto: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    if feedback:
        name = registry.get_run(parent.id)["name"]
        exchanges = read_exchanges(registry, set(), name=name, with_feedback=True)
        rows = feedback_rows(exchanges, labels)
        gold += [{**r, "messages": with_system(r["messages"], system)} for r in rows.sft]
        feedback_pairs, kto, skipped = rows.pairs, rows.kto, rows.skipped
        counts.update(corrections=len(rows.sft), ratings=len(rows.kto), skipped_feedback=len(skipped))
    fresh, seen = [], set(known)
    for row in gold:
        key = _key(row)
        if key not in seen:
            seen.add(key)
            fresh.append(row)
    counts["repeats_of_parent_data"] = len(gold) - len(fresh)
    counts["new_examples"] = len(fresh)
    new_train, held = stratified_split(
        fresh, [r.get("label") for r in fresh], config.monitor.retrain.holdout, config.seed
    )
    held_ids = {r.get("request_id") for r in held if r.get("request_id")}
    usable = [p for p in feedback_pairs if p["request_id"] not in held_ids]
    kinds = Counter(_kind(r) for r in parent_train)
    added, unused = _by_method(learns_from, kinds.most_common(1)[0][0], new_train, pairs + usable, kto)
    regression = list(parent_validation)
    if config.monitor.gate.max_examples is not None:
        regression = seeded_sample(regression, config.monitor.gate.max_examples, config.seed)
    if golden is not None:
        added_golden = [
            {
                "messages": with_system(ex.messages, system),
                **ex.extra,
                **({"label": ex.label} if ex.label else {}),
            }
            for ex in read_data(golden, label_field=config.data.label_field)
        ]
        regression += added_golden
        counts["golden"] = len(added_golden)
    counts.update(train_added=len(added), held_out=len(held), unused=len(unused), regression=len(regression))
    files = {
        "train.jsonl": parent_train + added,
        "regression.jsonl": regression,
        "new.jsonl": held,
        "validation.jsonl": regression + held,
        "unused.jsonl": unused,
        "skipped.jsonl": skipped,
    }
    # The data stage reads train and validation again; the gate's evaluations read regression and new as they are.
    staged = {"train.jsonl", "validation.jsonl"}
    texts = {
        name: "".join(json.dumps(_plain(r) if name in staged else r, ensure_ascii=False) + "\n" for r in rows)
        for name, rows in files.items()
    }
    digest = hashlib.sha256(parent.id.encode())
    for name in sorted(texts):
        digest.update(name.encode() + b"\0" + texts[name].encode())
    fingerprint = digest.hexdigest()
    directory = parent.root / "retrain" / fingerprint[:12]
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        write_atomic(directory / name, text)
    result = NextData(directory, fingerprint, labels, counts)
    write_atomic(
        directory / "inputs.json",
        json.dumps(
            {"parent": parent.id, "fingerprint": fingerprint, "labels": labels, "counts": counts}, indent=2
        ),
    )
    return result


def _kind(row: dict[str, Any]) -> str:
    """The kind of a prepared row, as `data.Example.kind` names it."""
    if "text" in row and "messages" not in row:
        return "text"
    return "feedback" if "desirable" in row else "preference" if "rejected" in row else "chat"


def _by_method(
    learns_from: frozenset[str],
    kind: str,
    chat: list[dict[str, Any]],
    pairs: list[dict[str, Any]],
    kto: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(new rows of `kind`, the kind of the parent's training rows, for the child to learn from; the others).

    A data file holds rows of one format, so the new rows take the parent's: conversations (the pairs made of
    corrections would only repeat them); pairs; or rated answers (KTO), into which pairs split as a good and a bad
    answer and new conversations count as good ones. Plain text (continued pre-training) takes none.
    """
    if kind not in learns_from or kind == "text":
        return [], chat + pairs + kto
    if kind == "chat":
        return chat, pairs + kto
    if kind == "preference":
        return [_pair(p) for p in pairs], chat + kto
    rated = list(kto)
    for pair in map(_pair, pairs):
        keep = {k: v for k, v in pair.items() if k not in ("prompt", "chosen", "rejected", "label")}
        rated += [
            {"messages": pair["prompt"], "completion": pair["chosen"][-1]["content"], "label": True, **keep},
            {
                "messages": pair["prompt"],
                "completion": pair["rejected"][-1]["content"],
                "label": False,
                **keep,
            },
        ]
    # a correction is in the pairs already (chosen over the served answer): only new files' conversations add
    for row in chat:
        if not row.get("request_id"):
            rated.append(
                {
                    "messages": row["messages"][:-1],
                    "completion": row["messages"][-1]["content"],
                    "label": True,
                }
            )
    return rated, []


def _pair(row: dict[str, Any]) -> dict[str, Any]:
    """A pair as the data stage reads it: prompt, chosen and rejected message lists."""
    if "prompt" in row:
        return row
    n = max(int(row.get("n_chosen", 1)), 1)
    keep = {k: v for k, v in row.items() if k not in ("messages", "rejected", "n_chosen")}
    return {
        "prompt": row["messages"][:-n],
        "chosen": row["messages"][-n:],
        "rejected": row["rejected"],
        **keep,
    }


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the data stage should read it again. A prepared pair or rated answer also holds `messages` (the
    whole conversation, for SFT), which would make it read as a conversation: it goes, leaving prompt, chosen and
    rejected, or prompt, completion and `label` true/false (the rated answer's input form; its `desirable` as
    prepared). `source` goes too: the data stage sets it."""
    shaped = "prompt" in row and ("rejected" in row or "desirable" in row)
    out = {k: v for k, v in row.items() if k != "source" and not (shaped and k == "messages")}
    if "desirable" in out:
        out.pop("label", None)
        out["label"] = out.pop("desirable")
    return out


def _key(row: dict[str, Any]) -> str:
    """A conversation and its answer, compared without case or spacing."""
    messages = row.get("messages") or [*(row.get("prompt") or []), *(row.get("chosen") or [])]
    return "\n".join(
        " ".join(str(m.get("content", "")).lower().split()) for m in messages if m.get("role") != "system"
    )
