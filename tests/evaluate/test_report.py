"""The HTML report shows the numbers of `report.json`: every plot is decoded and read back as a reader sees it.

Plots are SVG with text kept as text, so the test reads what a reader reads: the axis tick labels give the scale,
and the bars, interval whiskers, value labels, matrix counts and loss curves are converted back to numbers through
it and compared with `report.json` (and `train/metrics.jsonl` for the loss). A plot that drew a wrong bar length,
a shifted interval or a swapped count fails here, not only one whose data went missing.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from conftest import classification_rows, write_jsonl

from specialize.config import EvalConfig
from specialize.errors import EvalError
from specialize.evaluate import evaluate
from specialize.evaluate.report import comparison_rows, load_report, system_name, write_html_report

SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}href"
LABELS = ["billing", "shipping", "spam", "unused"]
SYSTEMS = ["base_zero_shot", "base_few_shot", "base_rag"]


class _Page(HTMLParser):
    """The images (by id) and tables (by id, as rows of cell texts) of the report page."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.images: dict[str, bytes] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            head, _, data = a["src"].partition(",")
            assert head == "data:image/svg+xml;base64"
            self.images[a["id"]] = base64.b64decode(data)
        elif tag == "table":
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None


class _Plot:
    """One decoded SVG plot: its texts, shapes and the data scale its tick labels state."""

    def __init__(self, svg: bytes) -> None:
        self.root = ET.fromstring(svg)
        self.groups = {g.get("id"): g for g in self.root.iter(f"{SVG}g") if g.get("id")}

    def text(self, gid: str) -> str:
        return "".join(self.groups[gid].itertext()).strip()

    def texts(self, prefix: str) -> dict[str, str]:
        return {k: self.text(k) for k in self.groups if k.startswith(prefix)}

    def ticks(self, axis: str) -> list[tuple[float, str]]:
        """(pixel position, label) of each tick of axis "x" or "y"."""
        out = []
        for gid, group in self.groups.items():
            if re.fullmatch(f"{axis}tick_\\d+", gid):
                use = next(group.iter(f"{SVG}use"))
                out.append((float(use.get(axis)), "".join(group.itertext()).strip()))
        return out

    def scale(self, axis: str):
        """Pixel -> data value, from two numeric tick labels (a plot's own statement of its scale)."""
        numeric = [(px, float(label.replace("\u2212", "-"))) for px, label in self.ticks(axis) if label]
        (p0, v0), (p1, v1) = numeric[0], numeric[-1]
        return lambda px: v0 + (px - p0) * (v1 - v0) / (p1 - p0)

    def paths(self, gid: str) -> list[list[tuple[float, float]]]:
        """The vertices of each path drawn under a group (not the marker shapes it defines)."""
        shapes = {id(p) for d in self.groups[gid].iter(f"{SVG}defs") for p in d.iter(f"{SVG}path")}
        out = []
        for path in self.groups[gid].iter(f"{SVG}path"):
            if id(path) in shapes:
                continue
            numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", path.get("d"))]
            out.append(list(zip(numbers[::2], numbers[1::2], strict=True)))
        return out

    def markers(self, gid: str) -> list[tuple[float, float]]:
        """Where a line's markers are drawn."""
        return [(float(u.get("x")), float(u.get("y"))) for u in self.groups[gid].iter(f"{SVG}use")]


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory):
    """A run directory holding what the report reads: a real evaluation, training losses, an audit."""
    root = tmp_path_factory.mktemp("run")
    train = write_jsonl(
        root / "data" / "train.jsonl",
        [{**r, "source": f"train.jsonl:{i + 1}"} for i, r in enumerate(classification_rows(24))],
    )
    validation = write_jsonl(
        root / "data" / "validation.jsonl",
        [
            {**r, "source": f"validation.jsonl:{i + 1}"}
            for i, r in enumerate(classification_rows(12, start=500))
        ],
    )
    evaluate(
        EvalConfig(systems=SYSTEMS, few_shot_k=2, rag_k=2),
        tiny_model_dir,
        None,
        train,
        validation,
        root / "eval",
        LABELS,
        progress=False,
        train_dir=root / "train",
    )
    losses = [{"step": s, "loss": 2.0 / s + 0.1, "tokens": 10, "tokens_per_second": 5.0} for s in range(1, 9)]
    write_jsonl(root / "train" / "metrics.jsonl", losses)
    (root / "train" / "result.json").write_text(
        json.dumps({"steps": 8, "validation_loss": 0.61, "final_train_loss": 0.35}), encoding="utf-8"
    )
    (root / "data" / "audit.json").write_text(json.dumps({"counts": {"train": 24}}), encoding="utf-8")
    return root


@pytest.fixture
def run_root(evaluated, tmp_path):
    """A copy of the evaluated run, for a test to change."""
    return shutil.copytree(evaluated, tmp_path / "run")


def test_every_plot_shows_the_numbers_of_the_report(run_root):
    page = _Page(write_html_report(run_root, "run").read_text(encoding="utf-8"))
    report = json.loads((run_root / "eval" / "report.json").read_text(encoding="utf-8"))
    assert set(page.images) == {"bars", "loss", *(f"confusion:{s}" for s in SYSTEMS)}

    bars = _Plot(page.images["bars"])
    x = bars.scale("x")
    intervals = report["significance"]["intervals"]
    whiskers = sorted(bars.paths("intervals"), key=lambda p: p[0][1])  # top to bottom: the systems' order
    assert len(whiskers) == len(SYSTEMS)
    for system, whisker in zip(SYSTEMS, whiskers, strict=True):
        value = report["systems"][system]["macro_f1"]
        [bar] = bars.paths(f"bar:{system}")
        assert x(max(px for px, _ in bar)) == pytest.approx(value, abs=1e-3), "bar length"
        assert x(min(px for px, _ in bar)) == pytest.approx(0, abs=1e-3), "bars start at zero"
        low, high = sorted(x(px) for px, _ in whisker)
        assert (low, high) == (
            pytest.approx(intervals[system][0], abs=1e-3),
            pytest.approx(intervals[system][1], abs=1e-3),
        )
        assert bars.text(f"value:{system}") == f"{value:.3f}"
    assert [label for _, label in sorted(bars.ticks("y"))] == [system_name(s) for s in SYSTEMS]

    for system in SYSTEMS:
        plot = _Plot(page.images[f"confusion:{system}"])
        matrix = report["systems"][system]["confusion_matrix"]
        columns, rows = sorted(plot.ticks("x")), sorted(plot.ticks("y"))
        shown = {}
        for gid in plot.texts(
            "cell:"
        ):  # each count is read where it is drawn: its row and column by position
            [text] = plot.groups[gid].iter(f"{SVG}text")
            x, y = float(text.get("x")), float(text.get("y"))
            column = min(range(len(columns)), key=lambda j: abs(columns[j][0] - x))
            row = min(range(len(rows)), key=lambda i: abs(rows[i][0] - y))
            shown[(row, column)] = int(plot.text(gid))
        assert shown == {(i, j): c for i, row in enumerate(matrix) for j, c in enumerate(row) if c}
        assert sum(shown.values()) == report["n_examples"]
        assert [label for _, label in rows] == LABELS, "rows in label order"
        assert [label for _, label in columns] == LABELS

    loss = _Plot(page.images["loss"])
    lx, ly = loss.scale("x"), loss.scale("y")
    logged = [json.loads(line) for line in (run_root / "train" / "metrics.jsonl").read_text().splitlines()]
    [curve] = loss.paths("line:train")
    assert [(round(lx(a), 3), round(ly(b), 3)) for a, b in curve] == [
        (p["step"], pytest.approx(p["loss"], abs=2e-3)) for p in logged
    ]
    [marker] = loss.markers("line:validation")  # one point: the validation loss at the end of training
    assert (lx(marker[0]), ly(marker[1])) == (
        pytest.approx(8, abs=1e-2),
        pytest.approx(0.61, abs=2e-3),
    )


def test_every_table_shows_the_numbers_of_the_report(run_root):
    page = _Page(write_html_report(run_root, "run").read_text(encoding="utf-8"))
    report = load_report(run_root / "eval" / "report.json")

    header, rows = comparison_rows(report)
    assert page.tables["comparison"] == [header, *rows]
    for row, (system, m) in zip(rows, report["systems"].items(), strict=True):
        cells = dict(zip(header, row, strict=True))
        assert cells["macro_f1"] == f"{m['macro_f1']:.3f}" and cells["labels averaged"] == str(
            m["labels_averaged"]
        )
        assert cells["scoring"] == report["scoring"]["chosen"][system]
        low, high = report["significance"]["intervals"][system]
        assert cells["macro_f1 95% CI"] == f"{low:.3f}-{high:.3f}"

    variants = page.tables["variants"]
    for row, system in zip(variants[1:], SYSTEMS, strict=True):
        for cell, variant in zip(row[1:], ("raw", "length", "calibrated", "pmi"), strict=True):
            v = report["scoring"]["variants"][system][variant]
            assert (
                cell.startswith(f"{v['value']:.3f}")
                and f"({v['interval'][0]:.3f}-{v['interval'][1]:.3f})" in cell
            )
            assert cell.endswith(" collapsed") == v["collapse"]["flagged"]
            assert ("*" in cell) == (report["scoring"]["chosen"][system] == variant)

    distribution = {row[0]: row[1:] for row in page.tables["distribution"][1:]}
    per_class = {row[0]: row[1:] for row in page.tables["per_class"][1:]}
    for label in LABELS:
        m = report["systems"]
        assert distribution[label][0] == str(m[SYSTEMS[0]]["support"][label])
        assert distribution[label][1:] == [str(m[s]["predicted_counts"][label]) for s in SYSTEMS]
        f1 = [m[s]["per_class_f1"][label] for s in SYSTEMS]
        assert per_class[label][1:] == ["absent" if v is None else f"{v:.2f}" for v in f1]
    assert (
        "unused" in per_class
        and "absent" in per_class["unused"]
        or any(report["systems"][s]["predicted_counts"]["unused"] for s in SYSTEMS)
    ), "a label neither asked nor answered shows as absent"


def test_a_report_of_the_old_schema_is_re_rendered_with_a_note(run_root):
    path = run_root / "eval" / "report.json"
    current = json.loads(path.read_text(encoding="utf-8"))
    old = {  # what the previous version wrote: macro averages over the whole label set, no schema, no gold
        "task": "classification",
        "headline": "macro_f1",
        "labels": LABELS,
        "n_examples": current["n_examples"],
        "systems": {
            s: {
                "macro_f1": sum(v or 0.0 for v in m["per_class_f1"].values()) / len(LABELS),
                "accuracy": m["accuracy"],
                "predictions": m["predictions"],
                "confusion_matrix": m["confusion_matrix"],
            }
            for s, m in current["systems"].items()
        },
        "significance": {
            "intervals": {s: [0.0, 1.0] for s in current["systems"]},
            "paired_test": {"p_value": 0.5},
        },
        "overfitting": None,
    }
    path.write_text(json.dumps(old), encoding="utf-8")

    report = load_report(path)

    assert (
        report["upgraded_from"] == 1 and "schema 1" in report["note"] and "no paired test" in report["note"]
    )
    assert "paired_test" not in report["significance"]
    for system, m in report["systems"].items():
        assert m["macro_f1"] == current["systems"][system]["macro_f1"], "today's definition, from the counts"
        assert m["labels_averaged"] == current["systems"][system]["labels_averaged"]
        low, high = report["significance"]["intervals"][system]
        assert low <= m["macro_f1"] <= high
    assert html.escape(report["note"]) in write_html_report(run_root, "run").read_text(encoding="utf-8")


def test_a_report_of_a_newer_schema_is_refused(run_root):
    path = run_root / "eval" / "report.json"
    path.write_text(json.dumps({"schema": 99, "task": "classification"}), encoding="utf-8")

    with pytest.raises(EvalError, match=r"report schema 99 was written by a newer specialize"):
        load_report(path)
