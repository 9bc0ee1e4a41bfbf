"""`specialize compare RUN RUN ...`: one row per run, read from each run's report and the registry."""

from __future__ import annotations

import csv
import io
import json
import pathlib

from specialize.cli.main import main
from specialize.config import load_config
from specialize.runs import Registry


def _two_runs(config_factory, capsys) -> tuple[list[str], str]:
    first = config_factory("first.yaml", name="first")
    second = config_factory(
        "second.yaml",
        name="second",
        train={"lora": {"rank": 4}},
        eval={"systems": ["base_zero_shot", "fine_tuned"]},
    )
    assert main(["--quiet", "run", str(first)]) == 0
    assert main(["--quiet", "run", str(second)]) == 0
    capsys.readouterr()
    url = load_config(first).registry_url
    return [r["id"] for r in Registry(url).list_runs()], url


def test_compare_prints_every_run_in_every_format(config_factory, capsys):
    (first, second), url = _two_runs(config_factory, capsys)

    assert main(["compare", first, second, "--registry", url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "fine-tuned vs best alternative" in table[0] and "base, RAG (95% CI)" in table[0]
    [first_row] = [line for line in table if line.startswith(first)]
    [second_row] = [line for line in table if line.startswith(second)]
    assert "lora rank 16" in first_row and "48" in first_row and "macro_f1" in first_row
    assert "lora rank 4" in second_row and "vs base, zero-shot (p=" in second_row

    assert main(["compare", first, second, "--registry", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    run_dir = pathlib.Path(Registry(url).get_run(first)["run_dir"])
    report = json.loads((run_dir / "eval" / "report.json").read_text(encoding="utf-8"))
    assert [r["run"] for r in rows] == [first, second]
    assert rows[0]["train_examples"] == 48
    assert rows[0]["systems"]["fine_tuned"]["value"] == report["systems"]["fine_tuned"]["macro_f1"]
    assert rows[0]["fine_tuned_vs_best"] == report["significance"]["paired_test"]
    assert set(rows[1]["systems"]) == {"base_zero_shot", "fine_tuned"}

    assert main(["compare", first, second, "--registry", url, "--format", "csv"]) == 0
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["run"] for r in parsed] == [first, second]
    assert parsed[1]["base_rag_value"] == "", "a system a run did not evaluate is an empty cell"
    assert float(parsed[0]["fine_tuned_low"]) <= float(parsed[0]["fine_tuned_high"])
    assert parsed[0]["overfitting"] in ("yes", "no")

    # a report written before today's schema is re-rendered, and says so, rather than mixed in silently
    path = run_dir / "eval" / "report.json"
    for key in ("schema", "gold", "scoring", "sample", "definitions"):
        del report[key]
    for metrics in report["systems"].values():  # the old estimate: every label of the set averaged
        metrics["macro_f1"] = sum(v or 0.0 for v in metrics["per_class_f1"].values()) / len(report["labels"])
    path.write_text(json.dumps(report), encoding="utf-8")
    assert main(["compare", first, second, "--registry", url]) == 0
    assert f"note: {first}: written by an earlier specialize (report schema 1" in capsys.readouterr().out
    assert main(["compare", first, "--registry", url, "--format", "json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert "recomputed from its confusion matrices" in row["note"] and row["fine_tuned_vs_best"] is None


def test_compare_of_an_unknown_run_is_a_one_line_error(run_config, capsys):
    url = load_config(run_config).registry_url

    code = main(["compare", "no-such-run", "--registry", url])

    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: no run 'no-such-run'") and len(err.strip().splitlines()) == 1
