"""An LLM judge as a reward: any OpenAI-compatible chat endpoint scores each answer against a rubric.

Each answer is one `POST {url}/chat/completions` (temperature 0): the rubric and the 0..max_score scale in the
system message, the conversation and the answer in the user message; the first number of the reply is the score,
divided by `max_score`. Requests run `concurrency` at a time, so a server that batches concurrent requests
(`specialize serve` does) decodes them together.

The request is made with the standard library: one JSON POST per answer needs no client library, and the judge is
an optional reward that should not add a dependency to every install.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from specialize.config import JudgeReward
from specialize.errors import ConfigError, RewardError
from specialize.train.rewards import Scored

SYSTEM = (
    "You are a strict grader. Score the assistant's final answer against this rubric:\n\n{rubric}\n\n"
    "Reply with one integer from 0 (fails the rubric) to {top} (fully meets it), and nothing else."
)
SCORE = re.compile(r"-?\d+(?:\.\d+)?")


class Judge:
    """The `judge` reward: scores in [0, 1] from an LLM's verdicts."""

    def __init__(self, config: JudgeReward) -> None:
        self.config = config
        self.name = f"judge {config.model} at {config.url}"
        self.endpoint = config.url.rstrip("/") + "/chat/completions"
        self.key = None
        if config.api_key_env is not None:
            self.key = os.environ.get(config.api_key_env)
            if not self.key:
                raise ConfigError(
                    f"reward.api_key_env names {config.api_key_env}, which is not set; export the judge's API "
                    "key in it, or remove reward.api_key_env for an endpoint without keys"
                )

    def check(self, rows: Sequence[dict[str, Any]]) -> None:
        return None  # a judge needs only the prompt and the answer

    def score(self, items: Sequence[Scored]) -> list[Any]:
        with ThreadPoolExecutor(self.config.concurrency) as pool:
            return list(pool.map(self.verdict, items))

    def verdict(self, item: Scored) -> float:
        """One answer's score in [0, 1].

        Raises:
            RewardError: the endpoint cannot be reached or answers an error, or the reply holds no score in range.
        """
        reply = self._ask(item)
        found = SCORE.search(reply)
        top = self.config.max_score
        if found is None or not 0 <= float(found.group()) <= top:
            raise RewardError(
                f"reward {self.name} replied {reply[:80]!r} for row {item.where}: no score from 0 to {top} in it; "
                "use a judge model that follows instructions, or make reward.rubric ask more plainly"
            )
        return float(found.group()) / top

    def _ask(self, item: Scored) -> str:
        conversation = "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in item.prompt)
        body = {
            "model": self.config.model,
            "messages": [
                {
                    "role": "system",
                    "content": SYSTEM.format(rubric=self.config.rubric, top=self.config.max_score),
                },
                {
                    "role": "user",
                    "content": f"{conversation}\n\nASSISTANT'S ANSWER: {item.completion}\n\nScore:",
                },
            ],
            "temperature": 0,
            "max_tokens": 8,
        }
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.endpoint, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                doc = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RewardError(
                f"reward {self.name} answered HTTP {exc.code} for row {item.where}: {_error_message(exc)}; check "
                "reward.model, reward.url and the API key"
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RewardError(
                f"reward {self.name} could not be reached for row {item.where} ({reason}); start the judge's "
                "server or fix reward.url"
            ) from None
        except json.JSONDecodeError:
            raise RewardError(
                f"reward {self.name} answered something other than JSON for row {item.where}; reward.url must be "
                "the base URL of an OpenAI-compatible API (ending in /v1)"
            ) from None
        try:
            return str(doc["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise RewardError(
                f"reward {self.name} answered without choices[0].message.content for row {item.where}; is "
                "reward.url an OpenAI-compatible chat API?"
            ) from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The `error.message` of an OpenAI-shaped error body, else the start of the body."""
    try:
        text = exc.read().decode("utf-8", "replace")
    except OSError:
        return str(exc.reason)
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text[:200] or str(exc.reason)
