"""Training: supervised fine-tuning (SFT) or preference optimisation (DPO), with LoRA, DoRA or every weight.

Reads the prepared `data/train.jsonl` and `data/validation.jsonl` of a run, writes `train/adapter/` (or
`train/model/` for full fine-tuning) and `train/metrics.jsonl`. The loop is in `loop.py`.
"""

from specialize.train.loop import RESULT_FILE, TrainResult, train, validation_loss

__all__ = ["RESULT_FILE", "TrainResult", "train", "validation_loss"]
