"""Hyperparameter search: an Optuna study over the `search:` section of a run config, each trial a run.

`study.py` is the stage (`search_hyperparameters`); `space.py` the search space, `metric.py` the objective,
`worker.py` the worker processes and their trials, `report.py` the trials table, best config and study report,
`verdict.py` what the tuned and default runs' paired tests conclude.
"""

from specialize.search.report import CurvePoint, trials_table, write_best_config, write_study_report
from specialize.search.space import apply, default_space, space_of
from specialize.search.study import StudyResult, TrialRow, search_hyperparameters, study_result
from specialize.search.verdict import study_verdict

__all__ = [
    "CurvePoint",
    "StudyResult",
    "TrialRow",
    "apply",
    "default_space",
    "search_hyperparameters",
    "space_of",
    "study_result",
    "study_verdict",
    "trials_table",
    "write_best_config",
    "write_study_report",
]
