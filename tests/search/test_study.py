"""`specialize tune` on the tiny model: a study within its budget, then the winner next to the default config,
a learning curve and the study's report; pruning happens on the validation metric and is recorded."""

from __future__ import annotations

import datetime

import yaml
from studies import load_trials, study_config, the_study

from specialize.cli.main import main
from specialize.config import load_config, load_resolved
from specialize.runs import Registry
from specialize.train.resources import RUNTIME


def test_a_study_keeps_to_its_budget_then_trains_the_best_config_next_to_the_default(
    tmp_path, tiny_model_dir, capsys
):
    config = load_config(path := study_config(tmp_path, tiny_model_dir))
    assert main(["--quiet", "tune", str(path), "--budget", "30s", "--eval-every", "12", "--sample", "6"]) == 0
    out = capsys.readouterr().out

    registry = Registry(config.registry_url)
    study = the_study(registry)
    assert study["status"] == "completed"
    trials = load_trials(study["id"], config.registry_url)
    ran = [t for t in trials if t.user_attrs.get("run")]
    assert any(t.state.name == "COMPLETE" for t in ran), "a trial fits in the budget"
    deadline = datetime.datetime.fromtimestamp(
        load_trials_deadline(study["id"], config.registry_url), datetime.UTC
    )
    deadline = deadline.replace(tzinfo=None)
    interval = max(t.user_attrs["seconds"] / max(t.user_attrs["evaluations"], 1) for t in ran)
    for t in ran:
        assert t.datetime_start.astimezone(datetime.UTC).replace(tzinfo=None) < deadline, (
            "no trial starts late"
        )
        overrun = (
            t.datetime_complete.astimezone(datetime.UTC).replace(tzinfo=None) - deadline
        ).total_seconds()
        assert overrun <= interval + 3, "the study ends within one evaluation interval of its budget"

    children = {r["name"]: r for r in registry.list_runs(parent_run=study["id"])}
    assert sum(r["name"] == "tiny-trial" for r in registry.list_runs(parent_run=study["id"])) == len(ran)
    assert {"tiny-tuned", "tiny-default", "tiny-curve25", "tiny-curve50"} <= set(children)
    assert all(r["status"] == "completed" for name, r in children.items() if name != "tiny-trial")
    tuned_dir = config.runs_dir / children["tiny-tuned"]["id"]
    assert f"parent run: {study['id']}" in (tuned_dir / "model_card.md").read_text()

    study_dir = config.runs_dir / study["id"]
    best = load_config(study_dir / "search" / "best.yaml")  # a config `specialize run` takes as it is
    [winner] = [
        t
        for t in trials
        if t.number == yaml.safe_load((study_dir / "search" / "summary.json").read_text())["best_trial"]
    ]
    assert best.train.learning_rate == winner.params["train.learning_rate"]
    assert best.train.lora.rank == winner.params["train.lora.rank"] and best.search is None
    assert load_resolved(tuned_dir / "config.resolved.yaml").train == best.train
    assert best.eval.exclude_examples is None  # best.yaml names no file of the study's
    # the final runs are compared on the validation rows the trials were not ranked on: 6 of the 12
    sample = study_dir / "search" / "objective_sample.jsonl"
    for name in ("tiny-tuned", "tiny-default", "tiny-curve25"):
        run_dir = config.runs_dir / children[name]["id"]
        assert load_resolved(run_dir / "config.resolved.yaml").eval.exclude_examples == sample
        report = yaml.safe_load((run_dir / "eval" / "report.json").read_text())
        assert report["n_examples"] == 6 and report["sample"]["excluded"] == 6
    assert "(6 left out by eval.exclude_examples)" in out
    # the default run asks the base model what the tuned run asked it: those answers are kept, not recomputed
    kept = {
        name: yaml.safe_load((config.runs_dir / children[name]["id"] / "eval" / "report.json").read_text())[
            "answers_kept_from_earlier_runs"
        ]
        for name in ("tiny-tuned", "tiny-default")
    }
    assert kept == {"tiny-tuned": [], "tiny-default": ["base_zero_shot", "base_few_shot", "base_rag"]}
    html = (study_dir / "search" / "report.html").read_text()
    for section in (
        "Trials",
        "Optimisation history",
        "Tuned and default config on the validation examples the trials were not ranked on",
        "Learning curve",
    ):
        assert f"<h2>{section}" in html
    assert "train.learning_rate" in out and "learning curve" in out and "tuned config" in out
    # the verdict: the tuned fine-tune against the default one and the best alternative, paired on the same rows
    verdict = yaml.safe_load((study_dir / "search" / "summary.json").read_text())["verdict"]
    assert verdict["examples"] == 6 and len(verdict["lines"]) == 3  # search, what to use, the second half
    assert {"difference", "interval", "p_value", "p_value_reverse"} <= set(verdict["tuned_vs_default"])
    assert verdict["tuned_vs_best_alternative"]["against"].startswith("base_")
    assert "<h2>Verdict</h2>" in html and "\nverdict:\n- The tuned fine-tune scores" in out


def load_trials_deadline(study: str, url: str) -> float:
    import optuna

    return float(optuna.load_study(study_name=study, storage=url).user_attrs["deadline"])


def test_pruning_stops_poor_trials_early_and_the_registry_says_where_and_why(
    tmp_path, tiny_model_dir, capsys
):
    # Plain text: the objective is the validation loss, which tells a learning rate that learns from one that
    # does not at the first evaluation.
    path = study_config(
        tmp_path,
        tiny_model_dir,
        text=True,
        train={"max_steps": None, "epochs": 2, "batch_size": 4, "log_every": 100},
        search={"train.learning_rate": {"choice": [3e-2, 1e-6]}},
    )
    config = load_config(path)
    args = [
        "--quiet",
        "tune",
        str(path),
        "--budget",
        "5m",
        "--trials",
        "6",
        "--eval-every",
        "8",
        "--search-only",
    ]
    assert main(args) == 0
    registry = Registry(config.registry_url)
    study = the_study(registry)
    trials = load_trials(study["id"], config.registry_url)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert len(trials) == 6 and pruned, "a learning rate of 1e-6 loses to 3e-2 at the first rung"
    for t in pruned:
        row = registry.get_run(t.user_attrs["run"])
        assert row["status"] == "pruned" and row["parent_run"] == study["id"]
        assert row["error"].startswith(
            f"pruned at step {t.user_attrs['steps']} of {t.user_attrs['steps_planned']}"
        )
        [step] = [m["value"] for m in registry.get_metrics(row["id"], "search") if m["name"] == "pruned_step"]
        assert step == t.user_attrs["steps"] < t.user_attrs["steps_planned"]
        assert t.params["train.learning_rate"] == 1e-6
    assert "pruned at step" in capsys.readouterr().out


def test_a_trial_that_cannot_train_fails_alone_and_the_study_goes_on(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    # On a machine with 64 MiB free beyond Python's own, a rank-8192 adapter (100 MB of AdamW state on the tiny
    # model) is refused before its first step (memory): that trial fails, not the study. (A huge batch is no
    # longer refused: an SFT batch runs as passes of bounded size.)
    monkeypatch.setattr("specialize.train.resources.available_memory", lambda: RUNTIME + 64 * 2**20)
    path = study_config(tmp_path, tiny_model_dir, search={"train.lora.rank": {"choice": [4, 8192]}})
    assert main(["--quiet", "tune", str(path), "--budget", "5m", "--trials", "4", "--search-only"]) == 0
    config = load_config(path)
    registry = Registry(config.registry_url)
    trials = load_trials(the_study(registry)["id"], config.registry_url)
    failed = [t for t in trials if t.state.name == "FAIL" and "run" in t.user_attrs]
    assert failed and all(t.params["train.lora.rank"] == 8192 for t in failed)
    assert all(t.user_attrs["reason"].startswith("ResourceError") for t in failed)
    assert all(registry.get_run(t.user_attrs["run"])["status"] == "failed" for t in failed)
    assert any(t.state.name == "COMPLETE" for t in trials)


def test_a_study_can_rank_trials_on_unused_training_rows_and_keep_the_whole_validation_split_for_the_winner(
    tmp_path, tiny_model_dir, capsys
):
    # 48 training rows, 24 trained on: the other 24 passed every check, and the search is scored on 6 of them.
    path = study_config(tmp_path, tiny_model_dir, data={"max_train_examples": 24})
    config = load_config(path)
    args = ["--quiet", "tune", str(path), "--budget", "2m", "--trials", "2", "--sample", "6"]
    assert main([*args, "--sample-from", "unused-train"]) == 0
    out = capsys.readouterr().out

    registry = Registry(config.registry_url)
    study = the_study(registry)
    study_dir = config.runs_dir / study["id"]
    sample = [yaml.safe_load(line) for line in (study_dir / "search" / "objective_sample.jsonl").open()]
    trained = {yaml.safe_load(line)["source"] for line in (study_dir / "data" / "train.jsonl").open()}
    assert len(sample) == 6 and len({r["source"] for r in sample}) == 6
    assert all(r["source"].startswith(str(tmp_path / "data" / "train.jsonl")) for r in sample)
    assert not trained & {r["source"] for r in sample}, "no row of the objective was trained on"
    assert all("kind" not in r and "reason" not in r for r in sample), "prepared rows, not reject records"

    children = {r["name"]: r for r in registry.list_runs(parent_run=study["id"])}
    for name in ("tiny-tuned", "tiny-default"):
        run_dir = config.runs_dir / children[name]["id"]
        assert load_resolved(run_dir / "config.resolved.yaml").eval.exclude_examples is None
        report = yaml.safe_load((run_dir / "eval" / "report.json").read_text())
        assert report["n_examples"] == config.eval.max_examples and "excluded" not in report["sample"]
    assert "left out by eval.exclude_examples" not in out
    html = (study_dir / "search" / "report.html").read_text()
    assert "training examples left out by the data caps" in html
    assert (
        "<h2>Tuned and default config on the validation split (8 examples; the trials were ranked on" in html
    )

    # Without a cap there is nothing left out to score on: a one-line error naming the keys to set, recorded on
    # the failed study without the advice to resume it, which would not help.
    capsys.readouterr()
    uncapped = load_config(study_config(tmp_path / "uncapped", tiny_model_dir))
    assert main(["tune", str(tmp_path / "uncapped" / "run.yaml"), "--budget", "1m",
                 "--sample-from", "unused-train"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: --sample-from unused-train: no training row was left out") and "\n" not in err
    )
    [failed] = Registry(uncapped.registry_url).list_runs()
    assert failed["status"] == "failed" and "--resume" not in failed["error"]
