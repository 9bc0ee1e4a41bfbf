"""The dashboard in a real browser (Debian's chromium through Playwright), against a live `specialize ui`.

Each test signs in through the login form with an API key, as a user does, and fails on any console error or
uncaught exception of any page it opened. A screenshot of every page goes to test-output/ui/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from conftest import chat_row, classification_rows
from dashboard import SCRIPT_ROW, Dashboard, browser, dashboard, screenshots  # noqa: F401  (fixtures)

from specialize.ui.reading import read_json


@pytest.fixture
def expected_errors() -> list[str]:
    """Console errors a test causes on purpose (a refused upload logs its 400), by a part of their text."""
    return []


@pytest.fixture
def page(browser: Any, dashboard: Dashboard, expected_errors: list[str]) -> Iterator[Any]:
    """A signed-in tab of a fresh browser context; the test fails on any console error of any page it opened."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(f"{tab.url}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(f"{tab.url}: {e}"))
    tab.goto(dashboard.url + "/ui/runs")
    tab.fill("input[name=key]", dashboard.key)
    tab.click("form[data-testid=login-form] button[type=submit]")
    tab.wait_for_url("**/ui/runs")
    yield tab
    context.close()
    unexpected = [p for p in problems if not any(e in p for e in expected_errors)]
    assert not unexpected, unexpected


def report_of(dashboard: Dashboard, name: str) -> dict[str, Any]:
    run = dashboard.registry.get_run(dashboard.runs[name])
    return read_json(Path(run["run_dir"]) / "eval" / "report.json")


def test_sign_in_page_refuses_a_wrong_key(browser, dashboard, screenshots):
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(dashboard.url + "/ui/compare")
    assert "/ui/login" in tab.url
    tab.screenshot(path=screenshots / "login.png")
    tab.fill("input[name=key]", "sk-spec-not-a-key")
    tab.click("form[data-testid=login-form] button[type=submit]")
    assert "not an active API key" in tab.inner_text("[data-testid=error]")
    assert tab.evaluate("sessionStorage.getItem('specialize.key')") is None  # a wrong key is not kept
    tab.fill("input[name=key]", dashboard.key)
    tab.click("form[data-testid=login-form] button[type=submit]")
    tab.wait_for_url("**/ui/compare")  # back where the user was going
    context.close()


def test_runs_list_shows_every_run_with_its_headline_metric(page, dashboard, screenshots):
    page.screenshot(path=screenshots / "runs.png", full_page=True)
    listed = page.eval_on_selector_all("tr[data-run]", "rows => rows.map(r => r.dataset.run)")
    assert sorted(listed) == sorted(r["id"] for r in dashboard.registry.list_runs())
    for name, run_id in dashboard.runs.items():
        report = report_of(dashboard, name)
        value = report["systems"]["fine_tuned"][report["headline"]]
        low, high = report["significance"]["intervals"]["fine_tuned"]
        cell = page.inner_text(f"tr[data-run='{run_id}'] [data-testid=headline]")
        assert cell == f"{report['headline']} {value:.3f} [{low:.3f}–{high:.3f}]"
    page.fill("input[name=q]", "tuned")
    page.click("form[data-testid=filters] button")
    shown = page.eval_on_selector_all("tr[data-run]", "rows => rows.map(r => r.dataset.run)")
    assert shown == [dashboard.runs["tuned"]]
    page.goto(dashboard.url + "/ui/runs?sort=metric&order=asc")
    values = page.eval_on_selector_all(
        "[data-testid=headline] b", "cells => cells.map(c => parseFloat(c.textContent))"
    )
    assert values == sorted(values)


def test_run_page_numbers_equal_report_json(page, dashboard, screenshots):
    run_id = dashboard.runs["clauses"]
    report = report_of(dashboard, "clauses")
    page.goto(f"{dashboard.url}/ui/runs/{run_id}")
    page.wait_for_selector("[data-testid=training-curve] svg path.train")
    page.screenshot(path=screenshots / "run.png", full_page=True)
    for system, metrics in report["systems"].items():
        row = f"[data-testid=metric-table] tr[data-system='{system}']"
        for name, value in metrics.items():
            if isinstance(value, float | int) and not isinstance(value, bool):
                cell = page.locator(f"{row} td[data-metric='{name}']")
                assert float(cell.get_attribute("data-value")) == value
                assert cell.inner_text() == (f"{value:,}" if isinstance(value, int) else f"{value:.3f}")
        low, high = report["significance"]["intervals"][system]
        assert page.inner_text(f"{row} td[data-interval]") == f"{low:.3f}–{high:.3f}"
    for system, metrics in report["systems"].items():
        f1 = page.eval_on_selector_all(
            "[data-testid=per-label-per_class_f1] tbody tr",
            "(rows, i) => rows.map(r => r.children[i].dataset.value)",
            list(report["systems"]).index(system) + 1,
        )
        assert [float(v) for v in f1] == [metrics["per_class_f1"][label] for label in report["labels"]]
        counts = page.eval_on_selector_all(
            f"[data-testid=confusion-{system}] rect.cell title", "ts => ts.map(t => t.textContent)"
        )
        flat = [c for row in metrics["confusion_matrix"] for c in row]
        assert [float(t.rsplit(": ", 1)[1]) for t in counts] == flat
    examples = page.eval_on_selector_all(
        "[data-testid=examples] tbody tr", "rows => rows.map(r => r.hasAttribute('data-wrong'))"
    )
    assert len(examples) == report["n_examples"]
    assert examples == sorted(examples, reverse=True)  # the fine-tuned model's errors first
    audit = read_json(Path(dashboard.registry.get_run(run_id)["run_dir"]) / "data" / "audit.json")
    bars = page.eval_on_selector_all(
        "[data-testid=label-balance] rect[data-value]", "rs => rs.map(r => parseFloat(r.dataset.value))"
    )
    assert bars == [n for counts in audit["labels"].values() for n in (counts["train"], counts["validation"])]
    rejects = page.locator("[data-testid=rejects] tbody tr")
    assert rejects.count() == audit["counts"]["rejected"] > 0
    assert f"{audit['pii']['rows']} row(s) with personal data" in page.inner_text("[data-testid=pii]")


def test_a_script_in_a_data_row_shows_as_text(page, dashboard):
    page.goto(f"{dashboard.url}/ui/runs/{dashboard.runs['clauses']}")
    assert SCRIPT_ROW in page.inner_text("[data-testid=examples]")
    assert page.evaluate("window.__xss") is None
    scripts = page.eval_on_selector_all("script", "ss => ss.map(s => s.getAttribute('src'))")
    assert scripts == ["/ui/static/ui.js"]


def test_compare_two_runs(page, dashboard, screenshots):
    for run_id in dashboard.runs.values():
        page.check(f"tr[data-run='{run_id}'] input[name=run]")
    page.click("[data-testid=compare-button]")
    page.wait_for_url("**/ui/compare?*")
    page.screenshot(path=screenshots / "compare.png", full_page=True)
    bars = page.locator("[data-testid=compare-macro_f1] rect[data-value]")
    assert bars.count() == 2 * 2  # two systems, two runs
    diff = page.inner_text("[data-testid=config-diff]")
    assert "train.learning_rate" in diff and "train.lora.rank" in diff and "seed" not in diff.split()


def test_playground_answers_as_the_api_does(page, dashboard, screenshots):
    run_id = dashboard.runs["tuned"]
    page.goto(f"{dashboard.url}/ui/playground?right={run_id}")
    page.wait_for_selector(".playground[data-ready=true]")
    assert page.input_value("[data-testid=model-right]") == run_id
    page.fill("[name=max_tokens]", "12")
    page.fill("[data-testid=prompt]", "Label this message: where is my delivery")
    page.click("[data-testid=send]")
    answers = {}
    for side in ("left", "right"):
        reply = page.wait_for_selector(f"[data-testid=reply-{side}][data-answer]", timeout=60_000)
        answers[side] = reply.get_attribute("data-answer")
    page.screenshot(path=screenshots / "playground.png", full_page=True)
    for side, model in (("left", page.input_value("[data-testid=model-left]")), ("right", run_id)):
        direct = httpx.post(
            f"{dashboard.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {dashboard.key}"},
            json={
                "model": model,
                "messages": [{"role": "user", "content": "Label this message: where is my delivery"}],
                "max_tokens": 12,
                "temperature": 0,
            },
            timeout=60,
        ).json()
        assert answers[side] == direct["choices"][0]["message"]["content"]


def test_new_run_trains_with_a_live_curve(page, dashboard, screenshots, tmp_path, expected_errors):
    rows = classification_rows(24) + [chat_row("Label this message: cheap pills now", "spam", "spam")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n{not json\n", encoding="utf-8")
    expected_errors.append("status of 400")
    page.goto(dashboard.url + "/ui/new")
    page.set_input_files("[data-testid=training-file]", str(bad))
    page.click("[data-testid=start]")
    error = page.wait_for_selector("[data-testid=new-run-error]:not([hidden])")
    assert "line 2" in error.inner_text()  # the API's own message, every bad line named
    assert not page.is_visible("[data-testid=job]")

    data = tmp_path / "support.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    page.set_input_files("[data-testid=training-file]", str(data))
    page.fill("[name=suffix]", "browser")
    page.click("[data-testid=start]")
    link = page.wait_for_selector("[data-testid=job-run-link]", timeout=120_000)
    run_id = link.inner_text().removeprefix("run ")
    job_id = page.inner_text("section.job .job-id")
    try:
        seen = points(page, "[data-testid=job-curve]", at_least=1)
        assert points(page, "[data-testid=job-curve]", at_least=seen + 1) > seen
        page.screenshot(path=screenshots / "new-run.png", full_page=True)
        page.goto(f"{dashboard.url}/ui/runs/{run_id}")
        assert page.inner_text("[data-testid=run-status]") == "running"
        seen = points(page, "[data-testid=training-curve]", at_least=1)
        assert points(page, "[data-testid=training-curve]", at_least=seen + 1) > seen
        page.screenshot(path=screenshots / "run-live.png", full_page=True)
    finally:
        httpx.post(
            f"{dashboard.url}/v1/fine_tuning/jobs/{job_id}/cancel",
            headers={"Authorization": f"Bearer {dashboard.key}"},
            timeout=30,
        )


def points(page: Any, box: str, at_least: int, timeout: float = 60) -> int:
    """The number of training-loss points the live curve in `box` draws, once it draws `at_least`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = int(page.get_attribute(f"{box} svg", "data-points") or 0)
        if n >= at_least:
            return n
        page.wait_for_timeout(200)
    raise AssertionError(f"the curve in {box} drew {n} points in {timeout} s; wanted {at_least}")


def test_state_changes_need_the_csrf_token(page, dashboard):
    # The browser context's own cookies, without the page's token: the session alone does not sign out.
    refused = page.request.post(dashboard.url + "/ui/logout", form={"csrf_token": "forged"}, max_redirects=0)
    assert refused.status == 403
    assert page.request.post(dashboard.url + "/ui/logout", max_redirects=0).status == 403
    page.goto(dashboard.url + "/ui/runs")
    assert page.url.endswith("/ui/runs")  # still signed in: nothing changed
    page.click("form.sign-out button")
    page.wait_for_url("**/ui/login")
    page.goto(dashboard.url + "/ui/runs")
    assert "/ui/login" in page.url
