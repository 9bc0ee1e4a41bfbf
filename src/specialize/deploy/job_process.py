"""The process that trains one fine-tuning job of `specialize serve`: `python -m specialize.deploy.job_process CONFIG`.

The server's job runner starts it with the run config of the job (`<runs_dir>/fine_tuning/<job-id>.yaml`). It
starts the job's run, or continues it from its last checkpoint when a run made for the job already exists (the
server was killed or restarted while it trained); a completed run is left as it is. It ends itself as soon as the
server that started it is gone, so a restarted server never finds a trainer of the old one still writing the run.
Errors are printed as `error: ...` lines, as the CLI prints them; the runner keeps them in `<job-id>.log`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

from specialize.config import load_resolved
from specialize.errors import SpecializeError
from specialize.runs import Registry

PARENT_POLL_SECONDS = 0.2


def main(argv: list[str]) -> int:
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    logging.basicConfig(level=logging.INFO, format="specialize: %(message)s", stream=sys.stderr)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from specialize.deploy.jobs import run_of_job
    from specialize.pipeline import resume, run

    config = load_resolved(Path(argv[0]))
    assert config.fine_tuning_job is not None  # the runner only starts job configs
    registry = Registry(config.registry_url)
    try:
        run_id = run_of_job(registry, config.fine_tuning_job.id)
        if run_id is None:
            run(config, progress=False)
        elif registry.get_run(run_id)["status"] != "completed":
            resume(run_id, config.registry_url, progress=False)
    except SpecializeError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    return 0


def _exit_with_parent(parent: int) -> None:
    """End the process when its parent is gone: an orphan is adopted by another process and its ppid changes."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
