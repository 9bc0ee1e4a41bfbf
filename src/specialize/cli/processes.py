"""`specialize run CONFIG --processes N` (and `specialize train --resume RUN --processes N`): start N training
processes of the same command on this machine and wait for them.

The processes are started by torch's elastic agent, in this process, as `torchrun --standalone` starts them: a
free port for the rendezvous, the environment accelerate reads (`RANK`, `WORLD_SIZE`, ...), and a watchdog
that stops every process as soon as one fails and reports which one. Re-executing the command under the agent,
rather than forking worker functions (`notebook_launcher`, `torch.multiprocessing`), makes `--processes N` the
very code path of `torchrun -m specialize run CONFIG` on several machines: nothing is pickled, and each process
imports, seeds and reads its data as it would there.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

LAUNCHER = "SPECIALIZE_LAUNCHER_PID"  # set for the processes this launcher starts


def launch(argv: list[str], processes: int) -> int:
    """Run `specialize ARGV` as `processes` data-parallel processes; return the exit status of the run.

    Raises:
        TrainingError: a process was killed (a signal, e.g. the kernel's out-of-memory killer); the others were
            stopped, and the run continues from its last checkpoint with `specialize train --resume`.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from specialize.errors import TrainingError

    # What the processes inherit: torchrun's own default is 1 thread a process; on a CPU the cores are shared
    # out instead. Set for the launch only: a caller in Python (a test) keeps its environment.
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // processes))
    inherited = {"OMP_NUM_THREADS": threads, LAUNCHER: str(os.getpid())}
    # The agent logs each stop and restart at length; what matters is said once below.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=f"specialize-{os.getpid()}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
    )
    try:
        with _environment(inherited):
            elastic_launch(config, sys.executable)("-m", "specialize", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode > 0:  # it raised, and printed its error above
            print(
                f"error: process {rank} of {processes} failed (exit status {failure.exitcode}); the other "
                "processes were stopped",
                file=sys.stderr,
            )
            return failure.exitcode
        raise TrainingError(
            f"process {rank} of {processes} was killed ({failure.signal_name()}); the other "
            f"processes were stopped. Continue from the last checkpoint with `specialize train --resume RUN "
            f"--processes {processes}` (RUN: the run id in the log above)"
        ) from None
    return 0


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def follow_launcher() -> None:
    """In a process this launcher started: die with the launcher.

    The agent starts each process in a session of its own, so a launcher killed outright (SIGKILL, the
    out-of-memory killer) would leave its processes training, and writing checkpoints, with no one waiting
    for them. Linux's parent-death signal ends them with it; elsewhere they stop at the next collective that
    a dead peer leaves unanswered.
    """
    launcher = os.environ.get(LAUNCHER)
    if launcher is None or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != int(launcher):  # it died before the signal was armed
        os._exit(1)
