"""A simulated week of banking77 traffic through `specialize serve`, and what `specialize monitor` makes of it.

Takes a finished run fine-tuned on ../shared/datasets/banking77 (any size), makes it `banking77@production`, starts
`specialize serve` (log content redacted) and sends it a week of traffic, `--per-day` requests a day:

- days 1-3.5: banking77 queries the run was not trained on (the training file's rows outside its prepared split),
  in the dataset's own prompt template;
- days 3.5-7: half such queries, half out of scope in the same template: financial-news sentences
  (finance_phrasebank) and general instructions (general_instructions);
- feedback on a share of the answers: thumbs up when the answer is the gold label, else thumbs down with the gold
  label as a correction; thumbs down on out-of-scope answers (no banking label fits them).

The week is compressed into minutes: once the traffic is sent, the logged rows' times are spread over the seven
days that end now. Then `monitor_model` is run on the first half (the control) and the second half (the drift),
and the figures are printed as JSON. Nothing is trained here; retraining and the gate are covered by the tests.

    python benchmarks/monitor_week.py RUN_ID --registry sqlite:///runs/registry.db --per-day 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import sqlalchemy as sa

from specialize.config import load_resolved
from specialize.data import read_prepared
from specialize.monitor import monitor_model
from specialize.runs import Registry, now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run fine-tuned on banking77")
    parser.add_argument("--registry", default="sqlite:///runs/registry.db")
    parser.add_argument("--datasets", type=Path, default=Path("/work/shared/datasets"))
    parser.add_argument(
        "--per-day",
        type=int,
        default=30,
        help="requests a simulated day; a half-week needs drift.min_requests prompts (default 50: 15 a day)",
    )
    parser.add_argument("--feedback-share", type=float, default=0.3)
    parser.add_argument("--port", type=int, default=8917)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    registry = Registry(args.registry)
    run = registry.get_run(args.run)
    registry.set_alias(run["id"], "production", note="monitor_week.py")
    model = f"{run['name']}@production"
    traffic = week(args.datasets, Path(run["run_dir"]), args.per_day, rng)
    key = subprocess.run(
        [sys.executable, "-m", "specialize", "keys", "create", "--name", "week", "--registry", args.registry],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    server = subprocess.Popen(
        [sys.executable, "-m", "specialize", "serve", "--registry", args.registry, "--port", str(args.port)]
        + ["--max-tokens", "16", "--log-content", "redacted"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    started = time.monotonic()
    try:
        wait_for(f"http://127.0.0.1:{args.port}/health")
        ids = send(f"http://127.0.0.1:{args.port}/v1", key, model, traffic, args.feedback_share, rng)
    finally:
        server.terminate()
        server.wait(timeout=60)
    served_seconds = time.monotonic() - started
    start = spread_over_a_week(registry, ids, args.per_day)
    config = load_resolved(Path(run["run_dir"]) / "config.resolved.yaml").monitor
    middle = start + timedelta(days=3.5)
    halves = {
        "control (days 1-3.5)": monitor_model(registry, model, config, start, middle),
        "drift (days 3.5-7)": monitor_model(
            registry, model, config, middle, start + timedelta(days=7, hours=1)
        ),
    }
    summary: dict[str, Any] = {"run": run["id"], "requests": len(ids), "wall_seconds": round(served_seconds)}
    for name, report in halves.items():
        doc = report.doc
        summary[name] = {
            "flagged": report.flagged,
            "reasons": report.reasons,
            "report": str(report.html_path),
            "requests": sum(m["requests"] for m in doc["models"]),
            "quality": {k: doc["quality"][k] for k in ("judged", "bad_share", "error_rate")},
            "drift": {
                t["name"]: {k: round(t[k], 4) for k in ("effect", "threshold", "p_value")}
                | {"flagged": t["flagged"]}
                for t in (doc["drift"] or {}).get("tests", [])
            },
            "labels_note": (doc["drift"] or {}).get("labels_note"),
            # why drift was not judged, if it was not (e.g. fewer prompts than drift.min_requests)
            "drift_note": (doc["drift"] or {}).get("note"),
        }
    print(json.dumps(summary, indent=2))


def week(datasets: Path, run_dir: Path, per_day: int, rng: random.Random) -> list[dict[str, Any]]:
    """The week's requests in order: a prompt, its gold label (None out of scope) and whether it drifted."""
    trained = {r["messages"][0]["content"] for r in read_prepared(run_dir / "data" / "train.jsonl")}
    validation = {r["messages"][0]["content"] for r in read_prepared(run_dir / "data" / "validation.jsonl")}
    rows = [json.loads(line) for line in (datasets / "banking77" / "train.jsonl").read_text().splitlines()]
    fresh = [r for r in rows if r["messages"][0]["content"] not in trained | validation]
    rng.shuffle(fresh)
    template = fresh[0]["messages"][0]["content"].rsplit("Message: ", 1)[0] + "Message: "
    finance = [
        json.loads(line)["messages"][0]["content"].rsplit("Sentence: ", 1)[-1]
        for line in (datasets / "finance_phrasebank" / "train.jsonl").read_text().splitlines()
    ]
    general = [
        json.loads(line)["messages"][0]["content"]
        for line in (datasets / "general_instructions" / "train.jsonl").read_text().splitlines()
    ]
    out, banking = [], iter(fresh)
    for i in range(7 * per_day):
        drifted = i >= 3.5 * per_day and rng.random() < 0.5
        if drifted:
            text = rng.choice(finance) if rng.random() < 0.5 else rng.choice(general)
            out.append({"prompt": template + text, "gold": None, "drifted": True})
        else:
            row = next(banking)
            out.append({"prompt": row["messages"][0]["content"], "gold": row["label"], "drifted": False})
    return out


def wait_for(url: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the server did not answer {url} within {seconds} s")


def send(
    base: str, key: str, model: str, traffic: list[dict[str, Any]], share: float, rng: random.Random
) -> list[str]:
    """Ask every prompt (8 clients at a time, in order of the week) and give feedback on `share` of them."""
    headers = {"Authorization": f"Bearer {key}"}
    feedback_on = [rng.random() < share for _ in traffic]

    def ask(i: int) -> str:
        item = traffic[i]
        with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": item["prompt"]}],
                "temperature": 0,
            }
            reply = client.post("/chat/completions", json={**body, "max_tokens": 16})
            reply.raise_for_status()
            answer = reply.json()["choices"][0]["message"]["content"].strip()
            if feedback_on[i]:
                if item["gold"] is None:
                    fb: dict[str, Any] = {"rating": -1}
                elif answer == item["gold"]:
                    fb = {"rating": 1}
                else:
                    fb = {"rating": -1, "correction": item["gold"]}
                client.post("/feedback", json={"request_id": reply.json()["id"], **fb}).raise_for_status()
            return str(reply.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(ask, range(len(traffic))))


def spread_over_a_week(registry: Registry, ids: list[str], per_day: int) -> Any:
    """Give the i-th request (and its feedback) a time on day i // per_day of the week that ends now."""
    start = now() - timedelta(days=7)
    requests = sa.Table("served_requests", sa.MetaData(), autoload_with=registry.engine)
    feedback = sa.Table("feedback", sa.MetaData(), autoload_with=registry.engine)
    with registry.engine.begin() as conn:
        for i, request_id in enumerate(ids):
            when = start + timedelta(days=i / per_day)
            conn.execute(requests.update().where(requests.c.id == request_id).values(created_at=when))
            conn.execute(feedback.update().where(feedback.c.request_id == request_id).values(created_at=when))
    return start


if __name__ == "__main__":
    main()
