"""Evaluation: the fine-tuned model side by side with every cheaper alternative, on the same examples.

Reads the prepared splits and the trained adapter of a run, writes `eval/report.json` and `eval/report.html`.
The stage itself is in `evaluation.py`.
"""

from specialize.evaluate.evaluation import EVAL_BATCH, GENERATE_BATCH, SYSTEMS, EvalReport, evaluate

__all__ = ["EVAL_BATCH", "GENERATE_BATCH", "SYSTEMS", "EvalReport", "evaluate"]
