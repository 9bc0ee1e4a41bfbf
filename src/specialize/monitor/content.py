"""How much of a served prompt and answer the request log keeps: `specialize serve --log-content`.

- `full`: the request body and the answers as they were; production traffic becomes training data as is.
- `redacted` (the default): the same, with personal data (e-mail, phone, card, IBAN, IP, national id) replaced by
  `[KIND]` placeholders by the data stage's scanner (`data/pii.py`), the one `data.pii.mode: mask` uses, so a
  logged prompt reads like a prepared training row and the registry holds no personal data in clear.
- `none`: no text at all; what is kept is the request's shape (model, sampling settings), its token counts,
  latency and status, and the ratings of its feedback. Monitoring then reports traffic, latency and errors, but
  no input drift, and corrections cannot become training data.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

LogContent = Literal["none", "redacted", "full"]
LOG_CONTENTS: tuple[str, ...] = get_args(LogContent)
# The request body keys that carry what a user wrote; `none` drops them.
_TEXT_KEYS = frozenset({"messages", "prompt", "input", "correction", "comment", "suffix"})


class ContentPolicy:
    """Applies one `LogContent` mode to what is about to be written to the request log."""

    def __init__(self, mode: LogContent = "redacted") -> None:
        if mode not in LOG_CONTENTS:
            raise ValueError(f"log content must be one of {', '.join(LOG_CONTENTS)} (got {mode!r})")
        self.mode = mode
        self._scanner: Any = None
        if mode == "redacted":
            from specialize.data.pii import PiiScanner

            self._scanner = PiiScanner()

    def body(self, body: dict[str, Any] | None) -> dict[str, Any] | None:
        """A request body as it may be logged."""
        if body is None or self.mode == "full":
            return body
        if self.mode == "none":
            return {k: v for k, v in body.items() if k not in _TEXT_KEYS}
        return {k: self._redact(v) if k in _TEXT_KEYS else v for k, v in body.items()}

    def answer(self, answer: str | None) -> str | None:
        """An answer as it may be logged: the JSON list of answers the server records, or plain text."""
        if answer is None or self.mode == "full":
            return answer
        if self.mode == "none":
            return None
        try:
            decoded = json.loads(answer)
        except json.JSONDecodeError:
            return self.text(answer)
        # masked inside the JSON, not over it: an escaped character must not hide an address from the scanner
        return json.dumps(self._redact(decoded), ensure_ascii=False)

    def text(self, text: str | None) -> str | None:
        """A free text (a correction, a comment) as it may be kept."""
        if text is None or self.mode == "full":
            return text
        return None if self.mode == "none" else str(self._scanner.mask(text))

    def _redact(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._scanner.mask(value)
        if isinstance(value, list):
            return [self._redact(v) for v in value]
        if isinstance(value, dict):
            return {k: self._redact(v) for k, v in value.items()}
        return value
