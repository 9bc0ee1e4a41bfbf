"""The background worker of `specialize serve` that trains fine-tuning jobs, one at a time.

Each job trains in a child process (`child.py`, running the CLI's `specialize run` or `specialize train --resume`),
never in the server: a crash, an out-of-memory kill or a
cancel ends the child and the server goes on answering. On start the worker first takes up a job that was
running when the server stopped (its child continues the run from the last checkpoint), then the queued jobs in
the order they came. A cancelled job's child is killed at once. Output of each child goes to
`<runs_dir>/fine_tuning/<job-id>.log`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from specialize.errors import DataError
from specialize.serve.fine_tuning.jobs import FineTuningJob, FineTuningJobs, fine_tuned_model_id
from specialize.train import RESULT_FILE, TrainResult

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how soon a cancel, a shutdown or the end of the data stage is noticed
IDLE_SECONDS = 5.0  # how often an idle worker looks for jobs queued by another process


class JobRunner:
    """Runs the queued fine-tuning jobs of a registry on a background thread."""

    def __init__(self, jobs: FineTuningJobs) -> None:
        self.jobs = jobs
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fine-tuning", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the child of the current job and the worker; the job stays running and the next start continues it."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        """Look at the jobs now: one was queued or cancelled."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job = self.jobs.next_to_run()
            if job is None:
                self._wake.wait(IDLE_SECONDS)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception as exc:  # a bug here must fail the job, not stop every later one
                log.exception("fine-tuning job %s", job.id)
                self._fail(job, "server_error", f"{type(exc).__name__}: {exc}", None)

    def _run(self, job: FineTuningJob) -> None:
        run_id = self.jobs.run_of(job.id)
        if job.status == "queued":
            self.jobs.add_event(job.id, f"Validating training file: {job.training_file}")
        else:
            where = "from its last checkpoint" if run_id else "from the start of its data stage"
            self.jobs.add_event(job.id, f"The server restarted; the job continues {where}")
        if not self.jobs.set_status(job.id, "running" if run_id else "validating_files"):
            return  # cancelled meanwhile
        log_path = self.jobs.directory / f"{job.id}.log"
        if run_id is None:
            command = ["run", str(job.config_path)]
        else:
            run = self.jobs.registry.get_run(run_id)
            if run["status"] == "completed":  # the server stopped between the end of the run and of the job
                self._finished(job, 0, log_path)
                return
            command = ["train", "--resume", run["run_dir"]]  # its config names its registry
        with log_path.open("ab") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "specialize.serve.fine_tuning.child", "--quiet", *command],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a kill reaches anything it started
            )
        while child.poll() is None:
            if self._stopping.is_set():
                _kill(child)
                return
            if self.jobs.status_of(job.id) == "cancelled":
                _kill(child)
                self._cancelled(job)
                return
            if run_id is None and (run_id := self.jobs.run_of(job.id)) is not None:
                self.jobs.set_status(job.id, "running", run_id=run_id)
                self.jobs.add_event(job.id, f"Files validated; training run {run_id} started")
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
        self._finished(job, child.returncode, log_path)

    def _finished(self, job: FineTuningJob, code: int, log_path: Path) -> None:
        run_id = self.jobs.run_of(job.id)
        if code != 0:
            kind = "invalid_training_file" if code == DataError.exit_code else "training_failed"
            self._fail(job, kind, _failure(self.jobs, run_id, code, log_path), run_id)
            return
        assert run_id is not None  # the child exits 0 only with its run completed
        run_dir = Path(self.jobs.registry.get_run(run_id)["run_dir"])
        trained = TrainResult.load(run_dir / "train" / RESULT_FILE)
        model_id = fine_tuned_model_id(job)
        done = self.jobs.set_status(
            job.id, "succeeded", fine_tuned_model=model_id, run_id=run_id, trained_tokens=trained.train_tokens
        )
        if done:
            self.jobs.add_event(job.id, f"New fine-tuned model created: {model_id}")
            self.jobs.add_event(job.id, "The job has successfully completed")

    def _fail(self, job: FineTuningJob, code: str, message: str, run_id: str | None) -> None:
        error = {"code": code, "message": message, "param": None}
        if self.jobs.set_status(job.id, "failed", error=error, run_id=run_id):
            self.jobs.add_event(job.id, f"Fine-tuning job failed: {message}", level="error")

    def _cancelled(self, job: FineTuningJob) -> None:
        run_id = self.jobs.run_of(job.id)
        if run_id is not None and self.jobs.registry.get_run(run_id)["status"] != "completed":
            self.jobs.registry.finish_run(
                run_id, "cancelled", error=f"fine-tuning job {job.id} was cancelled"
            )
        self.jobs.set_status(job.id, "cancelled", only_from=("cancelled",), run_id=run_id)


def _kill(child: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group: training state on disk is crash-safe, so nothing gentler is needed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _failure(jobs: FineTuningJobs, run_id: str | None, code: int, log_path: Path) -> str:
    """Why a child failed: the run's recorded error, else the `error:` lines it printed, else its exit code."""
    if run_id is not None:
        error = jobs.registry.get_run(run_id)["error"]
        if error:
            return str(error)
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    if errors:
        return "\n".join(errors[-25:])
    return f"the training process ended with exit code {code}; its output is in {log_path}"
