"""Pages over the run registry: the runs list, a run, a comparison of runs, and the live training metrics.

Reads the registry and the run directories through `reading.py`; writes nothing. The run page's training curve
polls `/ui/api/runs/{id}/metrics` (the registry's training metrics) while the run trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from specialize.errors import RunNotFoundError
from specialize.ui import charts
from specialize.ui.app import SECURITY_HEADERS, NavEntry, Site, UiContext
from specialize.ui.auth import Session
from specialize.ui.reading import (
    FINE_TUNED,
    LINKED_FILES,
    SORT_KEYS,
    Evaluation,
    RunSummary,
    flatten,
    list_runs,
    number,
    run_detail,
    summarize,
    training_curve,
)

if TYPE_CHECKING:
    from markupsafe import Markup

SCORE_METRICS = {"perplexity", "loss"}  # headline metrics that are not on a 0-1 scale


def pages(context: UiContext) -> list[NavEntry]:
    return [NavEntry("/ui/runs", "Runs"), NavEntry("/ui/compare", "Compare")]


def router(site: Site) -> APIRouter:
    registry = site.context.registry
    r = APIRouter()

    @r.get("/runs")
    def runs_page(
        q: str = "",
        status: str = "",
        task: str = "",
        sort: str = "created",
        order: str = "desc",
        session: Session = Depends(site.page_session),
    ) -> Response:
        sort = sort if sort in SORT_KEYS else "created"
        visible = site.visible(session)
        found, statuses, tasks = list_runs(registry, visible, q, status, task, sort, order != "asc")
        return site.render(
            "runs.html",
            session,
            active="/ui/runs",
            title="Runs",
            runs=found,
            statuses=statuses,
            tasks=tasks,
            filters={"q": q, "status": status, "task": task, "sort": sort, "order": order},
            total=sum(visible(row) for row in registry.list_runs()),
        )

    @r.get("/runs/{run_id}")
    def run_page(run_id: str, session: Session = Depends(site.page_session)) -> Response:
        try:
            detail = run_detail(site.run_row(session, run_id))
        except RunNotFoundError:
            return site.not_found(session, f"No run {run_id} in the registry.")
        return site.render(
            "run.html",
            session,
            active="/ui/runs",
            title=detail.run.id,
            d=detail,
            ev=detail.evaluation,
            charts=_run_charts(detail.evaluation, detail.audit),
        )

    @r.get("/runs/{run_id}/files/{name}")
    def run_file(run_id: str, name: str, session: Session = Depends(site.page_session)) -> Response:
        """A file of the run (its HTML report, report.json, model card, config): in the browser's own viewer
        (report.html sandboxed: it may show but never run anything)."""
        try:
            run_dir = Path(site.run_row(session, run_id)["run_dir"])
        except RunNotFoundError:
            return site.not_found(session, f"No run {run_id} in the registry.")
        if name not in LINKED_FILES or not (run_dir / LINKED_FILES[name]).is_file():
            return site.not_found(session, f"Run {run_id} has no file {name}.")
        path = run_dir / LINKED_FILES[name]
        if name == "report.html":
            headers = {
                **SECURITY_HEADERS,
                "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            }
            return FileResponse(path, media_type="text/html", headers=headers)
        if name.endswith(".json"):
            return FileResponse(path, media_type="application/json", headers=SECURITY_HEADERS)
        return PlainTextResponse(path.read_text(encoding="utf-8", errors="replace"), headers=SECURITY_HEADERS)

    @r.get("/api/runs")
    def runs_api(name: str = "", session: Session = Depends(site.api_session)) -> Response:
        """Runs (id, name, status), optionally only those named `name`: the new-run page finds a job's run."""
        visible = site.visible(session)
        rows = [
            {"id": row["id"], "name": row["name"], "status": row["status"]}
            for row in registry.list_runs()
            if (not name or row["name"] == name) and visible(row)
        ]
        return JSONResponse({"runs": rows})

    @r.get("/api/runs/{run_id}/metrics")
    def metrics_api(run_id: str, session: Session = Depends(site.api_session)) -> Response:
        try:
            curve = training_curve(registry, site.run_row(session, run_id))
            return JSONResponse(curve, headers={"Cache-Control": "no-store"})
        except RunNotFoundError as exc:
            return JSONResponse({"error": str(exc)}, 404)

    @r.get("/compare")
    def compare_page(
        run: list[str] | None = Query(None),
        session: Session = Depends(site.page_session),
    ) -> Response:
        visible = site.visible(session)
        chosen: list[RunSummary] = []
        missing = []
        for run_id in dict.fromkeys(run or []):
            try:
                chosen.append(summarize(site.run_row(session, run_id)))
            except RunNotFoundError:
                missing.append(run_id)
        everything = list_runs(registry, visible)[0] if len(chosen) < 2 else []
        evaluations = {s.id: run_detail(registry.get_run(s.id)).evaluation for s in chosen}
        return site.render(
            "compare.html",
            session,
            active="/ui/compare",
            title="Compare runs",
            chosen=chosen,
            missing=missing,
            everything=everything,
            evaluations=evaluations,
            bar_charts=_compare_charts(chosen, evaluations) if len(chosen) >= 2 else [],
            diff=_config_diff(chosen) if len(chosen) >= 2 else ([], []),
        )

    return r


def _run_charts(ev: Evaluation | None, audit: dict[str, Any]) -> dict[str, Markup]:
    """The run page's charts: label balance, metric bars with intervals, per-class F1, confusion matrices."""
    out: dict[str, Markup] = {}
    labels = audit.get("labels")
    if isinstance(labels, dict) and labels:
        groups = [
            (
                str(label),
                [
                    charts.Bar(split, value)
                    for split in ("train", "validation")
                    if isinstance(counts, dict) and (value := number(counts.get(split))) is not None
                ],
            )
            for label, counts in labels.items()
        ]
        out["balance"] = charts.bars(
            [g for g in groups if g[1]],
            "Examples per label, training and validation",
            test_id="label-balance",
        )
    if ev is None:
        return out
    from specialize.evaluate.report import system_name

    if ev.headline:
        groups = [
            (
                system_name(s),
                [charts.Bar(ev.headline, ev.values[s][ev.headline], *ev.intervals.get(s, (None, None)))],
            )
            for s in ev.systems
            if ev.headline in ev.values[s]
        ]
        if groups:
            top = None if ev.headline in SCORE_METRICS else 1.0
            out["headline"] = charts.bars(
                groups, f"{ev.headline} of every system, with 95% intervals", top, "metric-bars"
            )
    f1 = ev.per_label.get("per_class_f1", {})
    if f1 and ev.labels:
        groups = [
            (label, [charts.Bar(system_name(s), f1[s][label]) for s in f1 if label in f1[s]])
            for label in ev.labels
        ]
        out["per_class"] = charts.bars(groups, "F1 of each label", 1.0, "per-class-f1")
    for system, matrix in ev.confusion.items():
        out[f"confusion:{system}"] = charts.confusion_matrix(
            ev.labels, matrix, f"Confusion matrix of {system_name(system)}", f"confusion-{system}"
        )
    return out


def _compare_charts(
    runs: list[RunSummary], evaluations: dict[str, Evaluation | None]
) -> list[tuple[str, Markup]]:
    """One bar chart per headline metric: each system a group, each run a bar with its interval."""
    from specialize.evaluate.report import system_name

    by_metric: dict[str, list[tuple[str, Evaluation]]] = {}
    for run in runs:
        ev = evaluations.get(run.id)
        if ev is not None and ev.headline:
            by_metric.setdefault(ev.headline, []).append((run.id, ev))
    out = []
    for metric, members in by_metric.items():
        systems = list(dict.fromkeys(s for _, ev in members for s in ev.systems))
        systems.sort(key=lambda s: s != FINE_TUNED)
        groups = [
            (
                system_name(system),
                [
                    charts.Bar(run_id, value, *ev.intervals.get(system, (None, None)))
                    for run_id, ev in members
                    if (value := ev.values.get(system, {}).get(metric)) is not None
                ],
            )
            for system in systems
        ]
        top = None if metric in SCORE_METRICS else 1.0
        title = f"{metric} per system and run, with 95% intervals"
        out.append((metric, charts.bars([g for g in groups if g[1]], title, top, f"compare-{metric}")))
    return out


def _config_diff(runs: list[RunSummary]) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]]]:
    """(keys whose values differ between the runs, keys they share), each with the runs' values as text."""
    flat = [flatten(run.config) for run in runs]
    keys = sorted({k for f in flat for k in f})
    differ: list[tuple[str, list[str]]] = []
    same: list[tuple[str, list[str]]] = []
    for key in keys:
        shown = ["—" if key not in f else _show(f[key]) for f in flat]
        (same if len(set(shown)) == 1 else differ).append((key, shown))
    return differ, same


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        import json

        return json.dumps(value, ensure_ascii=False)
    return str(value)
