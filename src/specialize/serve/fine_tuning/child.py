"""The process that trains one fine-tuning job of `specialize serve`:
`python -m specialize.serve.fine_tuning.child SPECIALIZE-ARGS...`.

It runs the CLI's own command (`specialize run JOB.yaml`, or `specialize train --resume RUN_DIR` for a job whose
run a stopped server left unfinished), so a job trains, fails and prints its `error: ...` lines exactly as that
command does; the runner keeps them in `<job-id>.log`. One thing is added: the process ends itself as soon as the
server that started it is gone, so a restarted server never finds a trainer of the old one still writing the run.
"""

from __future__ import annotations

import os
import sys
import threading
import time

PARENT_POLL_SECONDS = 0.2


def main(argv: list[str]) -> int:
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    from specialize.cli.main import main as cli

    return cli(argv)


def _exit_with_parent(parent: int) -> None:
    """End the process when its parent is gone: an orphan is adopted by another process and its ppid changes."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
