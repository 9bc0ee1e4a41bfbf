"""The web dashboard: runs, their data, training and evaluation, comparisons, a playground and new runs.

An interface like `cli/` and `serve/`: it reads the registry and the run directories, and calls the server's own
OpenAI API from the browser. `specialize serve` mounts it at `/ui`; `specialize ui` starts the same server.
"""

from specialize.ui.app import UiContext, ui_router

__all__ = ["UiContext", "ui_router"]
