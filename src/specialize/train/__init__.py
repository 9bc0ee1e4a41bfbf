"""Training: supervised fine-tuning (SFT) or preference optimisation (DPO), with LoRA, DoRA or every weight.

Reads the prepared `data/train.jsonl` and `data/validation.jsonl` of a run, writes `train/adapter/` (or
`train/model/` for full fine-tuning) and `train/metrics.jsonl`. The loop is in `loop.py`; each method is an
`Objective` (`objective.py`): `supervised.py` (SFT), `preference.py` (DPO).
"""

from specialize.train.loop import RESULT_FILE, Preloaded, TrainResult, train
from specialize.train.objective import METHODS, Objective, check_rows
from specialize.train.supervised import validation_loss

__all__ = [
    "METHODS",
    "RESULT_FILE",
    "Objective",
    "Preloaded",
    "TrainResult",
    "check_rows",
    "train",
    "validation_loss",
]
