"""`specialize data check` and `specialize data prepare`, driven through the CLI entry point."""

from __future__ import annotations

import json

from specialize.cli.main import main
from specialize.data.audit import AUDIT_KEYS
from specialize.runs import Registry


def test_check_prints_the_audit_and_exits_zero(chat_dataset, capsys) -> None:
    code = main(["data", "check", str(chat_dataset.train), "--validation", str(chat_dataset.validation)])

    out = capsys.readouterr().out
    assert code == 0
    assert "task: classification" in out and "imbalance ratio" in out
    assert "billing" in out and "tokens counted with: estimate" in out
    assert "error:" not in out


def test_check_lists_every_problem_with_file_and_line_and_exits_non_zero(
    tmp_path, write_jsonl, chat_row, capsys
) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            chat_row("q", "a", "x"),
            "{oops",
            chat_row("q2", "b", "y"),
            {"messages": [{"role": "user", "content": "only a question"}]},
        ],
    )

    code = main(["data", "check", str(path)])

    out = capsys.readouterr().out
    assert code == 3
    assert f"error: {path}:2: invalid JSON" in out
    assert f"error: {path}:4: no assistant turn" in out
    assert "2 valid rows, 2 invalid" in out  # the audit of what is valid is still shown


def test_check_json_output_has_the_audit_keys_and_the_problems(chat_dataset, capsys) -> None:
    code = main(["data", "check", str(chat_dataset.train), "--json", "--set", "pii.mode=mask"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(AUDIT_KEYS) <= set(report) and report["problems"] == []
    assert report["pii"]["mode"] == "mask"
    assert report["split"]["method"] == "stratified by label"


def test_check_a_folder_finds_train_and_validation(chat_dataset, capsys) -> None:
    code = main(["data", "check", str(chat_dataset.train.parent), "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["files"]["validation"]["path"] == str(chat_dataset.validation)
    assert report["counts"] == {"train": 48, "validation": 12, "rejected": 0}


def test_check_a_run_config_uses_its_data_section_and_model(run_config, capsys) -> None:
    code = main(["data", "check", str(run_config), "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["tokens"]["counted_with"] == "tiny-chat tokenizer (exact)"
    assert report["tokens"]["context_length"] == 1024
    assert report["estimate"]["parameters"] > 0


def test_check_options_map_to_data_settings(tmp_path, capsys) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWhat is up?,The sky.\nAnd down?,The ground.\n", encoding="utf-8")

    unmapped = main(["data", "check", str(path)])
    unmapped_out = capsys.readouterr().out
    mapped = main(
        [
            "data",
            "check",
            str(path),
            "--set",
            "columns.prompt=question",
            "--set",
            "columns.completion=answer",
            "--json",
        ]
    )
    report = json.loads(capsys.readouterr().out)

    assert unmapped == 3 and "data.columns" in unmapped_out
    assert mapped == 0 and report["files"]["train"]["format"] == "completion"


def test_check_rejects_an_unknown_setting_by_name(chat_dataset, capsys) -> None:
    code = main(["data", "check", str(chat_dataset.train), "--set", "pii.mdoe=mask"])

    err = capsys.readouterr().err
    assert code == 2
    assert "data.pii.mdoe" in err and "mode" in err


def test_check_a_missing_file(tmp_path, capsys) -> None:
    code = main(["data", "check", str(tmp_path / "nope.jsonl")])

    assert code == 3
    assert "does not exist" in capsys.readouterr().err


def test_prepare_into_a_folder(run_config, tmp_path, capsys) -> None:
    out = tmp_path / "prepared"

    code = main(["data", "prepare", str(run_config), "--out", str(out)])

    assert code == 0
    assert {p.name for p in out.iterdir()} == {
        "train.jsonl",
        "validation.jsonl",
        "rejects.jsonl",
        "audit.json",
    }
    assert "48 training, 12 validation, 0 rejected" in capsys.readouterr().out


def test_prepare_creates_a_prepared_run_in_the_registry(run_config, tmp_path, capsys) -> None:
    code = main(["data", "prepare", str(run_config), "--set", "data.pii.mode=mask"])

    out = capsys.readouterr().out
    (run,) = Registry(f"sqlite:///{tmp_path / 'runs' / 'registry.db'}").list_runs()
    run_dir = tmp_path / "runs" / run["id"]
    assert code == 0 and f"run {run['id']}" in out
    assert run["status"] == "prepared"
    assert (run_dir / "config.resolved.yaml").is_file() and (run_dir / "data" / "audit.json").is_file()
    assert not list((tmp_path / "runs").glob(".*partial"))


def test_check_reports_examples_longer_than_the_model_context(
    tmp_path, tiny_model_dir, write_jsonl, chat_row, capsys
) -> None:
    rows = [chat_row(f"short question {i}", "yes") for i in range(5)] + [chat_row("word " * 2000, "yes")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)

    code = main(["data", "check", str(path), "--base-model", str(tiny_model_dir)])

    out = capsys.readouterr().out
    assert code == 0  # a run rejects the row and trains: the check's verdict is the run's
    assert (
        f"{path}:6: " in out
        and "longer than the 1024-token context of tiny-chat" in out
        and "error:" not in out
    )
    assert "too_long 1" in out
