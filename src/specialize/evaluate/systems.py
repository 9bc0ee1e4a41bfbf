"""What an evaluation compares: the task (what kind of answer is scored) and the systems (who answers, how prompted).

Both are types rather than strings so that a misspelt task or system is a type error, not a silently false
comparison. Their values are the strings written in `report.json` and the config (`eval.systems`), so reports
written before these types existed read the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Task(StrEnum):
    """What a row asks for, and therefore how answers are scored."""

    CLASSIFICATION = "classification"  # one label of the run's label set, scored over that set
    MULTIPLE_CHOICE = "multiple_choice"  # one of the row's own `choices`, scored over them
    GENERATION = "generation"  # a free answer, decoded greedily
    PREFERENCE = "preference"  # which of a chosen/rejected pair the system finds more likely
    TEXT = "text"  # held-out plain text (continued pre-training): perplexity

    @property
    def scores_labels(self) -> bool:
        """Answers are picked by scoring a set of candidate strings (so label-scoring variants apply)."""
        return self in (Task.CLASSIFICATION, Task.MULTIPLE_CHOICE)


class Prompting(StrEnum):
    """What a system's prompt holds before the question."""

    ZERO_SHOT = "zero_shot"  # the question alone
    FEW_SHOT = "few_shot"  # solved training examples as earlier turns
    RAG = "rag"  # retrieved training examples or document passages quoted before the question


@dataclass(frozen=True)
class System:
    """One evaluated system: which weights answer, and how they are prompted."""

    name: str  # as in eval.systems and report.json
    fine_tuned: bool  # runs on the fine-tuned weights (else the base model, the adapter switched off)
    prompting: Prompting
    title: str  # as shown in tables and plots


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System("base_zero_shot", False, Prompting.ZERO_SHOT, "base, zero-shot"),
        System("base_few_shot", False, Prompting.FEW_SHOT, "base, few-shot"),
        System("base_rag", False, Prompting.RAG, "base, RAG"),
        System("fine_tuned", True, Prompting.ZERO_SHOT, "fine-tuned"),
        System("fine_tuned_rag", True, Prompting.RAG, "fine-tuned, RAG"),
    )
}


def system_title(name: str) -> str:
    """How a system is called in tables and plots (its name when it is not a known system)."""
    system = SYSTEMS.get(name)
    return system.title if system else name
