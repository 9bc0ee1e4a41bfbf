"""Training: SFT, DPO, ORPO, KTO, a reward model, online DPO and GRPO, with LoRA, DoRA or every weight.

Reads the prepared `data/train.jsonl` and `data/validation.jsonl` of a run, writes `train/adapter/` (or
`train/model/` for full fine-tuning), `train/metrics.jsonl` and, on-policy, `train/samples.jsonl`. The loop is in
`loop.py`; each method is an `Objective` (`objective.py`): `supervised.py` (SFT), `preference.py` (DPO),
`orpo.py`, `kto.py`, `reward_model.py` (a reward model, and scoring with one), `onpolicy.py` (online DPO, GRPO).
The rewards the on-policy methods learn from, which evaluation reports too, are in `rewards.py` and `judge.py`.
"""

from specialize.train.loop import RESULT_FILE, SAMPLES_FILE, Preloaded, TrainResult, train
from specialize.train.objective import METHODS, Objective, check_rows
from specialize.train.rewards import (
    Reward,
    Scored,
    answer_number,
    build_reward,
    prompt_of,
    reference_number,
    score_answers,
)
from specialize.train.supervised import validation_loss

__all__ = [
    "METHODS",
    "RESULT_FILE",
    "SAMPLES_FILE",
    "Objective",
    "Preloaded",
    "Reward",
    "Scored",
    "TrainResult",
    "answer_number",
    "build_reward",
    "check_rows",
    "prompt_of",
    "reference_number",
    "score_answers",
    "train",
    "validation_loss",
]
