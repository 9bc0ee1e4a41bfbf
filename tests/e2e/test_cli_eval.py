"""`specialize eval RUN --data FILE` scores a finished run on a new file and records it next to the run."""

from __future__ import annotations

import json

from conftest import classification_rows, write_jsonl

from specialize.cli.main import main
from specialize.config import load_config
from specialize.runs import Registry


def test_eval_on_a_new_file_is_recorded(run_config, tmp_path, capsys):
    assert main(["--quiet", "run", str(run_config)]) == 0
    config = load_config(run_config)
    registry = Registry(config.registry_url)
    [run] = registry.list_runs()
    test_file = write_jsonl(tmp_path / "heldout.jsonl", classification_rows(6, start=5000))
    capsys.readouterr()

    assert (
        main(["--quiet", "eval", run["id"], "--data", str(test_file), "--registry", config.registry_url]) == 0
    )

    out = capsys.readouterr().out
    assert "6 examples, classification" in out and "fine-tuned" in out
    rows = registry.get_metrics(run["id"], "eval:heldout")
    assert {r["system"] for r in rows} == {
        "base_zero_shot",
        "base_few_shot",
        "base_rag",
        "fine_tuned",
        "fine_tuned_rag",
    }
    heldout = json.loads(
        (config.runs_dir / run["id"] / "eval" / "heldout" / "report.json").read_text("utf-8")
    )
    validation = json.loads((config.runs_dir / run["id"] / "eval" / "report.json").read_text("utf-8"))
    # eval.scoring best was chosen on the validation split; the test file is scored the same way, not re-chosen
    assert heldout["scoring"]["chosen"] == validation["scoring"]["chosen"]
    assert heldout["scoring"]["how"] == "recorded: chosen on the run's validation split"
    assert registry.get_run(run["id"])["status"] == "completed"


def test_eval_of_an_unknown_run_is_a_one_line_error(run_config, tmp_path, capsys):
    config = load_config(run_config)
    test_file = write_jsonl(tmp_path / "heldout.jsonl", classification_rows(3))
    code = main(["eval", "no-such-run", "--data", str(test_file), "--registry", config.registry_url])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: no run 'no-such-run'") and "Traceback" not in err
