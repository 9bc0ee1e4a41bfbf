"""specialize: turn a general pretrained LLM into a domain specialist, and keep it one.

The Python API is the product; the CLI and servers are thin layers over these functions.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "specialize.config",
    "run": "specialize.pipeline",
    "resume": "specialize.pipeline",
    "evaluate_run": "specialize.pipeline",
    "compare_runs": "specialize.pipeline",
    "prepare_data": "specialize.data",
    "train": "specialize.train",
    "evaluate": "specialize.evaluate",
    "export_run": "specialize.deploy",
    "pull_model": "specialize.models",
    "list_models": "specialize.models",
    "Registry": "specialize.runs",
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    # Lazy, so that `import specialize` (and `specialize --help`) stays fast: stages import torch.
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(name)
