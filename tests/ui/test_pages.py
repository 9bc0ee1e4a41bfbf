"""The dashboard in-process (ASGI): sign-in, sessions and CSRF, and every page over runs whose files differ.

Runs are copies of one finished tiny run with their `report.json`, `audit.json` or `rejects.jsonl` rewritten the
way older and newer versions of specialize write them (keys missing, keys added, odd types), so the pages are
shown to read what is there and never fail on what is not.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import FastAPI

from specialize.runs import Registry, RunDir
from specialize.serve.api_keys import ApiKeys
from specialize.ui import UiContext, ui_router
from specialize.ui.auth import SESSION_COOKIE, Sessions
from specialize.ui.charts import Bar, bars, confusion_matrix


@pytest.fixture(scope="module")
def finished(finish_run: Any) -> Any:
    return finish_run(eval={"max_examples": 8, "systems": ["base_zero_shot", "fine_tuned"]})


@pytest.fixture
def registry(finished: Any, tmp_path: Path) -> Registry:
    """A registry of its own holding a copy of the finished run (id `original`)."""
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    copy_run(finished, registry, tmp_path, "original", lambda _: None)
    return registry


def copy_run(
    finished: Any, registry: Registry, root: Path, run_id: str, change: Callable[[Path], Any]
) -> str:
    """Register a copy of the finished run as `run_id`, after `change(run_root)` rewrote its files."""
    target = root / run_id
    shutil.copytree(finished.run_dir.root, target)
    change(target)
    row = finished.registry.get_run(finished.run_dir.id)
    registry.create_run(RunDir(target), run_id, row["base_model"], json.loads(row["config"]))
    registry.finish_run(run_id, "completed")
    return run_id


class Client:
    """A browser stand-in: keeps cookies, follows nothing, reads the CSRF token off each page."""

    def __init__(self, app: FastAPI) -> None:
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return asyncio.run(self._send("GET", path, **kw))

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return asyncio.run(self._send("POST", path, **kw))

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, path, **kw)

    def use_session(self, cookie: str) -> None:
        self.http.cookies.clear()
        self.http.cookies.set(SESSION_COOKIE, cookie)

    def sign_in(self, key: str | None) -> httpx.Response:
        page = self.get("/ui/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text
        return self.post(
            "/ui/login", data={"key": key or "", "csrf_token": token.group(1), "next": "/ui/runs"}
        )


def client_for(registry: Registry, auth: bool = True, fine_tuning: bool = True) -> tuple[Client, str | None]:
    keys = ApiKeys(registry) if auth else None
    secret = keys.create("tests")[1] if keys else None
    app = FastAPI()
    app.include_router(ui_router(UiContext(registry, keys, "tiny-chat", fine_tuning)))
    return Client(app), secret


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found, page.text
    return found.group(1)


def test_pages_need_a_signed_in_session(registry):
    client, key = client_for(registry)
    for path in ("/ui/runs", "/ui/runs/original", "/ui/compare", "/ui/playground", "/ui/new"):
        response = client.get(path)
        assert response.status_code == 303 and response.headers["location"].startswith("/ui/login?next=")
    assert client.get("/ui/api/runs/original/metrics").status_code == 401
    assert client.get("/ui/static/ui.css").status_code == 200  # no user data in the stylesheet
    assert client.get("/ui/static/../reading.py").status_code == 404

    signed = client.sign_in(key)
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/runs"
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    assert key not in signed.headers["set-cookie"]
    page = client.get("/ui/runs")
    assert page.status_code == 200 and "original" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_sign_in_refusals(registry):
    client, key = client_for(registry)
    assert (
        client.post("/ui/login", data={"key": key}).status_code == 403
    )  # no form token: another site's form
    wrong = client.sign_in("sk-spec-nope")
    assert wrong.status_code == 401 and SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
    assert client.get("/ui/runs").status_code == 303
    page = client.get("/ui/login?next=//evil.example/x")
    assert 'value="/ui/runs"' in page.text  # never sent off-site after signing in


def test_a_forged_expired_or_revoked_session_ends(registry):
    client, key = client_for(registry)
    client.sign_in(key)
    cookie = client.http.cookies[SESSION_COOKIE]
    payload, _, signature = cookie.partition(".")
    client.use_session(payload + "x." + signature)
    assert client.get("/ui/runs").status_code == 303
    other, other_key = client_for(registry)  # another server process: another signing secret
    other.sign_in(other_key)
    client.use_session(other.http.cookies[SESSION_COOKIE])
    assert client.get("/ui/runs").status_code == 303

    client.use_session(cookie)
    assert client.get("/ui/runs").status_code == 200
    key_id = ApiKeys(registry).list()[0].id
    ApiKeys(registry).revoke(key_id)
    assert client.get("/ui/runs").status_code == 303

    expired = Sessions(ApiKeys(registry), lifetime_s=-1)
    assert expired.sign_in(ApiKeys(registry).create("x")[1]) is not None
    request = type("R", (), {"cookies": {SESSION_COOKIE: expired.sign_in(other_key)}})()
    assert expired.read(request) is None  # type: ignore[arg-type]


def test_sign_out_needs_the_csrf_token(registry):
    client, key = client_for(registry)
    client.sign_in(key)
    token = csrf_of(client.get("/ui/runs"))
    assert client.post("/ui/logout").status_code == 403
    assert client.post("/ui/logout", data={"csrf_token": token + "x"}).status_code == 403
    assert client.get("/ui/runs").status_code == 200  # still signed in
    done = client.post("/ui/logout", headers={"X-CSRF-Token": token})
    assert done.status_code == 303 and done.headers["location"] == "/ui/login"
    assert SESSION_COOKIE in done.headers["set-cookie"] and "max-age=0" in done.headers["set-cookie"].lower()


def test_without_keys_signing_in_takes_no_key(registry):
    client, _ = client_for(registry, auth=False)
    page = client.get("/ui/login")
    assert 'name="key"' not in page.text and "--no-auth" in page.text
    assert client.sign_in(None).status_code == 303
    assert client.get("/ui/runs").status_code == 200


def test_navigation_lists_only_what_the_server_has(registry):
    client, key = client_for(registry, fine_tuning=False)
    client.sign_in(key)
    page = client.get("/ui/runs")
    nav = re.findall(r'<nav aria-label="pages">(.*?)</nav>', page.text, re.S)[0]
    assert re.findall(r">([^<]+)</a>", nav) == ["Runs", "Compare", "Playground"]
    assert client.get("/ui/new").status_code == 404


def drop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def change(report: dict[str, Any]) -> None:
        for key in keys:
            report.pop(key, None)

    return change


def newer(report: dict[str, Any]) -> None:
    """Report schema 2 as the eval branch writes it: a schema number, the sample, definitions, the references,
    scoring variants per system, predicted-label counts and a collapse check per system."""
    report.update(
        schema=2,
        sample={"method": "stratified by label", "examples": 8, "of": 12, "labels_covered": 3, "labels": 3},
        definitions={"macro_f1": "mean of per-label F1 over the labels in the gold answers or predictions"},
        gold=["reference answer"] * report["n_examples"],
        scoring={"requested": "best", "chosen": dict.fromkeys(report["systems"], "calibrated")},
    )
    for metrics in report["systems"].values():
        metrics["scoring"] = "calibrated"
        metrics["labels_averaged"] = 3
        metrics["predicted_counts"] = {label: 1 for label in report["labels"]}
        metrics["collapse"] = {"label": "billing", "share": 0.625, "flagged": False, "rule": "a rule"}


def odd(report: dict[str, Any]) -> None:
    """Every part present, none of the expected type."""
    report["n_examples"] = "eight"
    report["labels"] = "billing"
    report["significance"] = {"intervals": {"fine_tuned": [0.1]}, "paired_test": {"system": "fine_tuned"}}
    report["overfitting"] = ["not", "a", "dict"]
    report["systems"]["fine_tuned"]["confusion_matrix"] = [[1, 2], [3]]
    report["systems"]["fine_tuned"]["predictions"] = ["billing"]
    report["systems"]["base_zero_shot"] = ["not", "a", "dict"]


def generation(report: dict[str, Any]) -> None:
    report.update(task="generation", headline="rouge_l", labels=None)
    for metrics in report["systems"].values():
        for key in ("per_class_f1", "support", "confusion_matrix"):
            metrics.pop(key)
        metrics["rouge_l"] = 0.25


def rewrite(name: str, change: Callable[[dict[str, Any]], None] | str | None) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / name
        if change is None:
            path.unlink()
        elif isinstance(change, str):
            path.write_text(change, encoding="utf-8")
        else:
            doc = json.loads(path.read_text(encoding="utf-8"))
            change(doc)
            path.write_text(json.dumps(doc), encoding="utf-8")

    return apply


VARIANTS = {
    "old-no-intervals": (rewrite("eval/report.json", drop("significance", "overfitting")), ["fine-tuned"]),
    "old-no-headline": (
        rewrite("eval/report.json", drop("headline", "labels", "n_examples")),
        ["fine-tuned"],
    ),
    "newer": (
        rewrite("eval/report.json", newer),
        [
            "predicted_counts",
            "labels_averaged",
            "calibrated",
            "collapse",
            "schema, sample",
            "reference answer",
        ],
    ),
    "odd-types": (rewrite("eval/report.json", odd), ["fine-tuned"]),
    "generation": (rewrite("eval/report.json", generation), ["rouge_l"]),
    "not-evaluated": (rewrite("eval/report.json", None), ["Not evaluated yet"]),
    "report-not-json": (rewrite("eval/report.json", "{not json"), ["Not evaluated yet"]),
    "audit-missing": (rewrite("data/audit.json", None), ["No data audit yet"]),
    "audit-odd": (
        rewrite("data/audit.json", '{"labels": [1, 2], "pii": "yes", "counts": 3}'),
        ["Data audit"],
    ),
    "rejects-bad-line": (
        rewrite("data/rejects.jsonl", '{"kind": "duplicate"}\nnot json\n[1]\n'),
        ["not json"],
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_page_renders_for_old_new_and_odd_run_files(finished, registry, tmp_path, variant):
    change, shown = VARIANTS[variant]
    copy_run(finished, registry, tmp_path, variant, change)
    client, key = client_for(registry)
    client.sign_in(key)
    listed = client.get("/ui/runs?sort=metric")
    assert listed.status_code == 200 and f'data-run="{variant}"' in listed.text
    page = client.get(f"/ui/runs/{variant}")
    assert page.status_code == 200, page.text
    for text in shown:
        assert text in page.text
    compared = client.get(f"/ui/compare?run=original&run={variant}")
    assert compared.status_code == 200 and 'data-testid="config-diff"' not in compared.text  # same config
    assert client.get(f"/ui/api/runs/{variant}/metrics").json()["status"] == "completed"


def test_a_key_sees_only_its_own_jobs_runs(finished, registry, tmp_path):
    """As the API shows a key only its own jobs and models: another key's job run is missing; an admin sees it."""
    keys = ApiKeys(registry)
    (owner, owner_secret), other_secret = keys.create("owner"), keys.create("other")[1]
    admin_secret = keys.create("admin", admin=True)[1]
    job_run = copy_run(finished, registry, tmp_path, "ftjob-0123", lambda _: None)
    app = FastAPI()
    app.include_router(
        ui_router(UiContext(registry, keys, "tiny-chat", job_owners=lambda: {job_run: owner.id}))
    )
    for secret, sees in ((owner_secret, True), (other_secret, False), (admin_secret, True)):
        client = Client(app)
        client.sign_in(secret)
        assert (f'data-run="{job_run}"' in client.get("/ui/runs").text) is sees
        assert client.get(f"/ui/runs/{job_run}").status_code == (200 if sees else 404)
        assert client.get(f"/ui/api/runs/{job_run}/metrics").status_code == (200 if sees else 404)
        assert client.get(f"/ui/runs/{job_run}/files/report.json").status_code == (200 if sees else 404)
        assert bool(client.get(f"/ui/api/runs?name={job_run}").json()["runs"]) is sees
        compared = client.get(f"/ui/compare?run=original&run={job_run}").text
        assert ("Not in the registry: " + job_run in compared) is not sees
        assert client.get("/ui/runs/original").status_code == 200  # a `specialize run` run is everyone's


def test_run_files_and_unknown_runs(registry):
    client, key = client_for(registry)
    client.sign_in(key)
    report = client.get("/ui/runs/original/files/report.html")
    assert report.status_code == 200 and report.headers["content-security-policy"].startswith("sandbox")
    assert client.get("/ui/runs/original/files/report.json").json()["task"] == "classification"
    assert client.get("/ui/runs/original/files/..%2Fregistry.db").status_code == 404
    assert client.get("/ui/runs/nope").status_code == 404
    assert client.get("/ui/api/runs/nope/metrics").status_code == 404
    curve = client.get("/ui/api/runs/original/metrics").json()
    steps = [p["step"] for p in curve["points"]]
    assert steps == sorted(steps) and all("loss" in p for p in curve["points"])


def test_charts_escape_labels():
    label = "<script>alert(1)</script>"
    drawn = str(bars([(label, [Bar("a&b", 0.5, 0.25, 0.75)])], "t", 1.0)) + str(
        confusion_matrix([label, "x"], [[1, 0], [0, 2]], "m")
    )
    assert "<script>" not in drawn and "&lt;script&gt;" in drawn and "a&amp;b" in drawn


def test_no_stage_imports_the_dashboard():
    """Layers: interfaces (cli, serve, ui) may use the dashboard's package; core and stages never do."""
    package = Path(__file__).resolve().parents[2] / "src" / "specialize"
    interfaces = {"cli", "serve", "ui"}
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.relative_to(package).parts[0] not in interfaces
        and re.search(r"^\s*(from|import) specialize\.ui\b", path.read_text(encoding="utf-8"), re.M)
    ]
    assert offenders == []
