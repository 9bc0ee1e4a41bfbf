"""Monitoring: what a served model was asked and how it answered, whether its inputs drift from its training data,
and what its next version learns from and must show before it replaces it.

Modules: request_log (served requests and feedback, written by the server), content (what the log keeps of the
text), traffic (the log read back, by answering run), drift (the drift tests), monitoring (`monitor_model` and its
report; html renders it), feedback (feedback as training rows), next_data (a retrained child's inputs), promotion
(the gate). The cycle itself (retrain, promote, rollback, loop) is orchestrated by `specialize.retraining`.
"""

from specialize.monitor.monitoring import MonitorReport, monitor_config_of, monitor_model
from specialize.monitor.next_data import NextData, build_next_data
from specialize.monitor.promotion import GateDecision

__all__ = [
    "GateDecision",
    "MonitorReport",
    "NextData",
    "build_next_data",
    "monitor_config_of",
    "monitor_model",
]
