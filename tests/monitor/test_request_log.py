"""The request log: rows as the server writes them, and feedback only from the key that made the request."""

from __future__ import annotations

import json

import pytest

from specialize.errors import NotFoundError
from specialize.monitor.request_log import RequestLog, ServedRequest
from specialize.runs import Registry


@pytest.fixture
def log(tmp_path) -> RequestLog:
    return RequestLog(Registry(f"sqlite:///{tmp_path / 'registry.db'}"))


def test_rows_are_kept_as_served(log):
    served = ServedRequest(
        "chatcmpl-1", "chat.completions", "key_a", "run-1", prompt_tokens=7, completion_tokens=3
    )
    served.request, served.response = {"messages": [{"role": "user", "content": "héllo"}]}, '["bonjour"]'
    log.record(served)
    log.record(ServedRequest("req-2", "models", "key_b", None, 401, "invalid_api_key"))
    first, second = log.requests_for()
    assert (first["id"], first["key_id"], first["prompt_tokens"], first["completion_tokens"]) == (
        "chatcmpl-1",
        "key_a",
        7,
        3,
    )
    assert json.loads(first["request"]) == served.request and first["response"] == '["bonjour"]'
    assert (second["status_code"], second["error_code"], second["request"]) == (401, "invalid_api_key", None)
    assert [r["id"] for r in log.requests_for("run-1")] == ["chatcmpl-1"]


def test_feedback_only_from_the_requests_own_key(log):
    log.record(ServedRequest("chatcmpl-1", "chat.completions", "key_a", "run-1"))
    log.record(ServedRequest("chatcmpl-2", "chat.completions", None, "run-1"))  # served without keys
    first = log.add_feedback("chatcmpl-1", "key_a", -1, "the right answer", None)
    second = log.add_feedback("chatcmpl-1", "key_a", None, None, "slow")
    assert second > first
    assert [(f["rating"], f["correction"], f["comment"]) for f in log.feedback_for("chatcmpl-1")] == [
        (-1, "the right answer", None),
        (None, None, "slow"),
    ]
    with pytest.raises(NotFoundError):  # another key's request is answered as if it did not exist
        log.add_feedback("chatcmpl-1", "key_b", 1, None, None)
    with pytest.raises(NotFoundError):
        log.add_feedback("chatcmpl-nope", "key_a", 1, None, None)
    log.add_feedback("chatcmpl-2", "key_b", 1, None, None)  # a request made without a key: anyone may rate it
    assert len(log.feedback_for("chatcmpl-2")) == 1
