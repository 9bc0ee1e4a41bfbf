"""What the request log keeps of prompts, answers and corrections under each `--log-content` mode."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from specialize.monitor.request_log import RequestLog, ServedRequest
from specialize.runs import Registry

ADDRESS = "jane.doe@example.com"
BODY = {
    "model": "tickets@production",
    "temperature": 0,
    "messages": [{"role": "user", "content": f"Label this message: write to me at {ADDRESS}"}],
}
ANSWER = json.dumps([f"I will write to {ADDRESS}"])


def logged(tmp_path, mode: str) -> tuple[dict, dict]:
    log = RequestLog(Registry(f"sqlite:///{tmp_path / f'{mode}.db'}"), mode)  # type: ignore[arg-type]
    served = ServedRequest(
        "chatcmpl-1", "chat.completions", None, BODY["model"], request=BODY, response=ANSWER
    )
    log.record(served)
    log.add_feedback("chatcmpl-1", None, -1, f"billing, and mail {ADDRESS}", "see my mail")
    (row,) = log.requests_for()
    (fb,) = log.feedback_for("chatcmpl-1")
    return row, fb


def test_full_keeps_every_word(tmp_path):
    row, fb = logged(tmp_path, "full")
    assert json.loads(row["request"]) == BODY and row["response"] == ANSWER
    assert ADDRESS in fb["correction"]


def test_redacted_masks_personal_data_with_the_data_stage_placeholders(tmp_path):
    row, fb = logged(tmp_path, "redacted")
    request = json.loads(row["request"])
    assert request["messages"][0]["content"] == "Label this message: write to me at [EMAIL]"
    assert request["model"] == "tickets@production" and request["temperature"] == 0
    assert json.loads(row["response"]) == ["I will write to [EMAIL]"]
    assert fb["correction"] == "billing, and mail [EMAIL]" and fb["rating"] == -1
    assert ADDRESS not in json.dumps([row["request"], row["response"], fb["correction"]])


def test_none_keeps_the_shape_and_no_text(tmp_path):
    row, fb = logged(tmp_path, "none")
    assert json.loads(row["request"]) == {"model": "tickets@production", "temperature": 0}
    assert row["response"] is None and fb["correction"] is None and fb["comment"] is None
    assert fb["rating"] == -1  # ratings are counted whatever the mode


def test_an_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="none, redacted, full"):
        RequestLog(Registry(f"sqlite:///{tmp_path / 'r.db'}"), "some")  # type: ignore[arg-type]


def test_a_registry_from_before_the_run_column_gets_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE served_requests (id VARCHAR(64) PRIMARY KEY, endpoint VARCHAR(100) NOT NULL, "
                "key_id VARCHAR(40), model VARCHAR(300), status_code INTEGER NOT NULL, error_code VARCHAR(100), "
                "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, latency_ms FLOAT NOT NULL, "
                "request TEXT, response TEXT, created_at DATETIME NOT NULL)"
            )
        )
    log = RequestLog(Registry(url))
    log.record(ServedRequest("chatcmpl-2", "chat.completions", model="r", run_id="r"))
    assert log.requests_for()[0]["run_id"] == "r"
