"""OpenAI's Files and fine-tuning jobs API on `specialize serve`: the routes (`routes.py`), the file and job
stores in the registry (`files.py`, `jobs.py`), the worker that trains one job at a time (`runner.py`) and the
child process a job trains in (`child.py`)."""

from specialize.serve.fine_tuning.files import UploadedFile, UploadedFiles
from specialize.serve.fine_tuning.jobs import FineTuningJob, FineTuningJobs
from specialize.serve.fine_tuning.routes import FineTuning
from specialize.serve.fine_tuning.runner import JobRunner

__all__ = ["FineTuning", "FineTuningJob", "FineTuningJobs", "JobRunner", "UploadedFile", "UploadedFiles"]
