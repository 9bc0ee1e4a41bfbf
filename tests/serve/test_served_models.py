"""Which models a server answers for: the base, every finished run on it (found when first asked for), and the
`ft:` id the job store gives a job's run."""

from __future__ import annotations

import pytest

from specialize.errors import NotFoundError
from specialize.runs import RunDir
from specialize.serve.fine_tuning import FineTuningJobs
from specialize.serve.fine_tuning.jobs import Hyperparameters
from specialize.serve.served_models import ServedModels


@pytest.fixture(scope="module")
def finished(finish_run):
    return finish_run(name="served", eval={"systems": ["fine_tuned"], "max_examples": 2})


def test_the_base_and_finished_runs_on_it(finished, tiny_model_dir):
    registry = finished.registry
    models = ServedModels("tiny", tiny_model_dir, registry)
    run_id = finished.run_dir.id
    assert {m.id for m in models.list("key_a", False)} == {"tiny", run_id}
    assert (
        models.get("tiny", "key_a", False).adapter is None
        and models.get("tiny", "key_a", False) is models.base
    )
    served = models.get(run_id, "key_a", False)
    assert served.adapter is not None and served.adapter.path == finished.run_dir.train / "adapter"
    assert served.adapter.id == run_id and not served.adapter.use_dora and served.created > 0
    with pytest.raises(NotFoundError, match="GET /v1/models"):
        models.get("nope", "key_a", False)
    other_base = ServedModels("other", finished.run_dir.root, registry)  # runs of another base are not served
    assert {m.id for m in other_base.list("key_a", False)} == {"other"}


def test_a_run_is_found_when_first_asked_for_and_unfinished_runs_are_not(finished, tiny_model_dir, tmp_path):
    registry = finished.registry
    models = ServedModels("tiny", tiny_model_dir, registry)
    unfinished = RunDir.create(tmp_path, "half-done")
    registry.create_run(unfinished, "half-done", str(tiny_model_dir), {})
    with pytest.raises(NotFoundError):
        models.get("half-done", "key_a", False)
    with pytest.raises(NotFoundError, match="not finished"):
        ServedModels("tiny", tiny_model_dir, registry, runs=["half-done"])
    # a run finished after the server started: its adapter appears, and the next request finds it
    (unfinished.train / "adapter").symlink_to(finished.run_dir.train / "adapter")
    (unfinished.config).symlink_to(finished.run_dir.config)
    registry.finish_run("half-done", "completed")
    assert models.get("half-done", "key_a", False).adapter.path == unfinished.train / "adapter"


def test_a_jobs_run_is_served_as_its_fine_tuned_model_to_its_key_only(finished, tiny_model_dir):
    registry = finished.registry
    jobs = FineTuningJobs(registry, finished.config.runs_dir)
    models = ServedModels("tiny", tiny_model_dir, registry, aliases=jobs.fine_tuned_models)

    def ids(key_id: str, admin: bool = False) -> set[str]:
        return {m.id for m in models.list(key_id, admin)}

    train = finished.config.data.train
    job = jobs.create(
        "key_a", str(tiny_model_dir), train, None, ("file-1", None), Hyperparameters(), "s", 1, None
    )
    run_id = finished.run_dir.id
    everyone = ids("key_b")
    assert {"tiny", run_id} <= everyone  # not a job's run yet: every key's
    jobs.set_status(job.id, "running", run_id=run_id)
    assert ids("key_b") == everyone - {run_id}  # the job's run is its key's from then on
    assert ids("key_a") == everyone  # and has no ft: id before the job succeeds
    jobs.set_status(job.id, "succeeded", fine_tuned_model="ft:tiny-chat:s:1", run_id=run_id)
    assert ids("key_a") == everyone | {"ft:tiny-chat:s:1"} == ids("key_b", admin=True)
    assert ids("key_b") == everyone - {run_id}
    ft = models.get("ft:tiny-chat:s:1", "key_a", False)
    assert ft.adapter == models.get(run_id, "key_a", False).adapter and ft.owner == "key_a"  # one adapter
    for hidden in (run_id, "ft:tiny-chat:s:1"):  # another key is told they do not exist, as for unknown ids
        with pytest.raises(NotFoundError, match="does not exist"):
            models.get(hidden, "key_b", False)
    assert models.get(run_id, "key_b", True).id == run_id  # an admin key sees them
    assert models.known("ft:tiny-chat:s:1") and not models.known("ft:nope")
