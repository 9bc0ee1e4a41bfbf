"""Evaluation: the fine-tuned model side by side with every cheaper alternative, on the same examples.

Reads the prepared splits and the trained adapter of a run, writes `eval/report.json` and `eval/report.html`.
The stage itself is in `evaluation.py`; the systems and tasks it knows in `systems.py`.
"""

from specialize.evaluate.evaluation import EVAL_BATCH, GENERATE_BATCH, EvalReport, evaluate
from specialize.evaluate.systems import SYSTEMS, System, Task

__all__ = ["EVAL_BATCH", "GENERATE_BATCH", "SYSTEMS", "EvalReport", "System", "Task", "evaluate"]
