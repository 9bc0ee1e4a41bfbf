"""Feedback on served answers as training rows: what `specialize retrain --feedback` learns from.

Reads logged exchanges with their feedback (`traffic.py`); returns rows in the formats the data stage reads, each
carrying the `request_id` it came from:

- a correction that differs from the served answer: a chat row, the conversation answered by the correction
  (supervised fine-tuning). For a classification task the correction must name a label (any capitalisation); it
  becomes the row's label.
- the same correction with the served answer: a preference pair, the correction chosen over the answer (DPO).
- a rating without a correction: the answer rated good or bad, in the `feedback` format (messages, completion,
  label true/false) that KTO learns from. Ratings are read on the scale in use (`traffic.judge`).

Which of these a child learns from depends on its training method; the rest are kept next to it, counted. An
exchange logged without text (`--log-content none`) or without feedback gives nothing, and one that cannot be used
is listed in `skipped` with the reason, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from specialize.monitor.traffic import Exchange, judge, uses_stars


@dataclass
class FeedbackRows:
    """Training rows made from feedback, by kind, and the feedback that could not be used."""

    sft: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    kto: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def feedback_rows(exchanges: list[Exchange], labels: list[str] | None) -> FeedbackRows:
    """Rows from the feedback on `exchanges`; `labels` is the task's label set (None: not classification)."""
    out = FeedbackRows()
    stars = uses_stars(exchanges)
    by_text = {label.strip().lower(): label for label in labels or []}
    for e in exchanges:
        if not e.feedback:
            continue
        if e.messages is None or e.answer is None:
            why = "the request was logged without its text (--log-content none, or refused)"
            out.skipped.append({"request_id": e.id, "reason": why})
            continue
        conversation = [m for m in e.messages if m["content"] or m["role"] != "system"]
        if not conversation or conversation[-1]["role"] != "user":
            out.skipped.append(
                {"request_id": e.id, "reason": "the conversation does not end with a user turn"}
            )
            continue
        correction = next((fb.correction for fb in reversed(e.feedback) if fb.correction), None)
        if correction is not None and correction.strip() != e.answer.strip():
            label = None
            if labels:
                label = by_text.get(correction.strip().strip(".").strip().lower())
                if label is None:
                    why = f"the correction {correction[:60]!r} names no label of the task"
                    out.skipped.append({"request_id": e.id, "reason": why})
                    continue
                correction = label
            answer = [{"role": "assistant", "content": correction}]
            row: dict[str, Any] = {"messages": conversation + answer, "request_id": e.id}
            if label is not None:
                row["label"] = label
            out.sft.append(row)
            out.pairs.append(
                {
                    "prompt": conversation,
                    "chosen": answer,
                    "rejected": [{"role": "assistant", "content": e.answer}],
                    "request_id": e.id,
                }
            )
            continue
        verdict = judge(e.feedback, stars, e.answer)
        if verdict is None:
            why = "neither a correction nor a rating that says good or bad"
            out.skipped.append({"request_id": e.id, "reason": why})
            continue
        out.kto.append(
            {"messages": conversation, "completion": e.answer, "label": not verdict, "request_id": e.id}
        )
    return out
