"""The row formats specialize reads, how each is recognised, and how each becomes a chat conversation.

Every format is normalised to the same thing: a list of `{role, content}` messages that a chat template can
render (plus, for preference pairs, the rejected answer; for plain text, the text). The formats:

- chat:       `{"messages": [{"role", "content"}, ...]}` (OpenAI fine-tuning JSONL; multi-turn, system message)
- sharegpt:   `{"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}`
- alpaca:     `{"instruction", "input"?, "output"}` (Dolly's `context`/`response` are read as input/output)
- completion: `{"prompt", "completion"}` (or `response`): one user turn and its answer
- preference: `{"prompt"?, "chosen", "rejected"}`, each plain text or a list of messages; without `prompt`,
              chosen and rejected are whole conversations and their common beginning is the prompt. Anthropic
              HH transcripts (`\\n\\nHuman: ... \\n\\nAssistant:`) are split into their turns.
- feedback:   `{"prompt" | "messages", "completion", "label": true | false}`: one answer rated good or bad (the
              shape of thumbs-up / thumbs-down feedback, TRL's unpaired preference rows), for KTO. `prompt` is
              text or a message list; `messages` is the conversation before the answer (ending with the user).
- text:       `{"text"}`: plain text for continued pre-training, no template.

A row that does not fit raises `RowError` with a message that names the key and the fix; the caller adds file
and line. Detection looks at keys only, so it is cheap enough to run on every row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("feedback", "chat", "sharegpt", "preference", "alpaca", "completion", "text")
ROLES = ("system", "user", "assistant")
# ShareGPT's names for the three speakers (OpenAI chat rows must use the three roles themselves).
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "system": "system",
}
DESCRIBE = {
    "feedback": "'prompt' (or 'messages'), 'completion' and a true/false 'label'",
    "chat": "'messages' (a list of {role, content})",
    "sharegpt": "'conversations' (a list of {from, value})",
    "preference": "'chosen' and 'rejected' (and usually 'prompt'), or OpenAI's 'input', 'preferred_output' and "
    "'non_preferred_output'",
    "alpaca": "'instruction' and 'output' (and optionally 'input')",
    "completion": "'prompt' and 'completion'",
    "text": "'text'",
}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


class RowError(ValueError):
    """A row that cannot become an example; the message says what is wrong and how to fix it."""


@dataclass
class Parsed:
    """What a row says, in chat terms, and which of its keys were used to say it (the rest stay as extras)."""

    messages: list[dict[str, str]] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    rejected: list[dict[str, str]] | None = None
    n_chosen: int = 0
    text: str | None = None
    notes: list[str] = field(default_factory=list)  # how the row was read when that was not literal
    desirable: bool | None = None  # a rated answer's rating (feedback rows)


def detect_format(row: dict[str, Any]) -> str | None:
    """The format a row's keys announce, or None; checked in FORMATS order, most specific first."""
    keys = set(row)
    if "completion" in keys and isinstance(row.get("label"), bool) and keys & {"prompt", "messages"}:
        return "feedback"
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if {"chosen", "rejected"} <= keys or {"preferred_output", "non_preferred_output"} <= keys:
        return "preference"
    if "instruction" in keys and keys & {"output", "response"}:
        return "alpaca"
    if "prompt" in keys and keys & {"completion", "response"}:
        return "completion"
    if "text" in keys:
        return "text"
    return None


def parse_row(fmt: str, row: dict[str, Any]) -> Parsed:
    """Turn one row of format `fmt` into chat terms, or raise RowError naming the problem."""
    return _PARSERS[fmt](row)


def check_turns(messages: list[dict[str, str]], where: str = "messages") -> None:
    """A conversation a model can learn from: system first if at all, then user/assistant in turn, ending with
    the assistant."""
    if any(m["role"] == "system" for m in messages[1:]):
        raise RowError("a system message may only come first")
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if "assistant" not in turns:
        raise RowError(
            f"no assistant turn in {where}: the last message must be the assistant's answer to learn from"
        )
    if turns[-1] != "assistant":
        raise RowError(
            f"the last message of {where} must be the assistant's answer to learn from; remove the "
            "trailing turn or add the answer"
        )
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise RowError(
                f"turn {i + 1} of {where} is {role!r} where {expected!r} was expected; user and "
                "assistant alternate, starting with the user"
            )


def _chat(row: dict[str, Any]) -> Parsed:
    messages = _messages(row.get("messages"), "messages", "role", "content")
    check_turns(messages)
    return Parsed(messages, {"messages"})


def _sharegpt(row: dict[str, Any]) -> Parsed:
    value = row.get("conversations")
    items = _json_list(value)
    first = items[0] if isinstance(items, list) and items else None
    role_key = "from" if isinstance(first, dict) and "from" in first else "role"
    content_key = "value" if role_key == "from" else "content"
    messages = _messages(value, "conversations", role_key, content_key, SHAREGPT_ROLES)
    used = {"conversations"}
    messages = _with_system(row, messages, used)
    check_turns(messages, "conversations")
    return Parsed(messages, used)


def _alpaca(row: dict[str, Any]) -> Parsed:
    instruction = _text(row, "instruction")
    input_key = "input" if "input" in row else "context" if "context" in row else None
    output_key = "output" if "output" in row else "response"
    extra_input = _text(row, input_key, required=False) if input_key else ""
    user = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    used = {"instruction", output_key} | ({input_key} if input_key else set())
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, output_key)}]
    return Parsed(_with_system(row, messages, used), used)


def _completion(row: dict[str, Any]) -> Parsed:
    answer_key = "completion" if "completion" in row else "response"
    used = {"prompt", answer_key}
    messages = [
        {"role": "user", "content": _text(row, "prompt")},
        {"role": "assistant", "content": _text(row, answer_key)},
    ]
    return Parsed(_with_system(row, messages, used), used)


def _feedback(row: dict[str, Any]) -> Parsed:
    if "completion" not in row:
        raise RowError(
            "missing 'completion'; a rated answer has 'prompt' (or 'messages'), 'completion' and 'label' true/false"
        )
    used = {"completion", "label"}
    notes: list[str] = []
    if row.get("messages") not in (None, ""):
        used.add("messages")
        prompt = _messages(row["messages"], "messages", "role", "content")
    elif row.get("prompt") not in (None, ""):
        used.add("prompt")
        prompt = _prompt(row["prompt"], notes)
    else:
        raise RowError("missing 'prompt' (or 'messages'): the conversation the completion answers")
    completion = _answer(row["completion"], "completion")
    prompt = _with_system(row, prompt, used)
    check_turns(prompt + completion, "prompt + completion")
    return Parsed(
        prompt + completion, used, n_chosen=len(completion), notes=notes, desirable=_rating(row.get("label"))
    )


def _rating(value: Any) -> bool:
    """A feedback row's label: true (a good answer) or false; CSV cells say it as text, 1 or 0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else None
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise RowError(
        f"'label' of a rated answer must be true (a good answer) or false (a bad one), got {value!r}"
    )


def _plain_text(row: dict[str, Any]) -> Parsed:
    return Parsed(used={"text"}, text=_text(row, "text"))


def _preference(row: dict[str, Any]) -> Parsed:
    if "preferred_output" in row or "non_preferred_output" in row:
        return _openai_preference(row)
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RowError(f"missing '{key}'; a preference pair needs 'chosen' and 'rejected' answers")
    used = {"chosen", "rejected"}
    notes: list[str] = []
    if "prompt" in row and row["prompt"] not in (None, ""):
        used.add("prompt")
        prompt = _prompt(row["prompt"], notes)
        chosen = _answer(row["chosen"], "chosen")
        rejected = _answer(row["rejected"], "rejected")
    else:
        # TRL's "implicit prompt" form: two whole conversations that differ only in the final answer.
        if "prompt" in row:
            used.add("prompt")
        whole_chosen = _conversation(row["chosen"], "chosen", notes)
        whole_rejected = _conversation(row["rejected"], "rejected", notes)
        n = 0
        while n < min(len(whole_chosen), len(whole_rejected)) and whole_chosen[n] == whole_rejected[n]:
            n += 1
        if n == 0:
            raise RowError(
                "without 'prompt', 'chosen' and 'rejected' must be whole conversations that start the "
                "same way; add a 'prompt' key"
            )
        prompt, chosen, rejected = whole_chosen[:n], whole_chosen[n:], whole_rejected[n:]
        if not chosen or not rejected:
            raise RowError(
                "'chosen' and 'rejected' are the same conversation; a pair needs two different answers"
            )
    prompt = _with_system(row, prompt, used)
    check_turns(prompt + chosen, "prompt + chosen")
    check_turns(prompt + rejected, "prompt + rejected")
    if chosen == rejected:
        raise RowError("'chosen' and 'rejected' are the same answer; a pair needs two different answers")
    return Parsed(prompt + chosen, used, rejected, len(chosen), notes=sorted(set(notes)))


def _openai_preference(row: dict[str, Any]) -> Parsed:
    """OpenAI's DPO rows: `input.messages`, `preferred_output` and `non_preferred_output` (message lists)."""
    for key in ("input", "preferred_output", "non_preferred_output"):
        if key not in row:
            raise RowError(
                f"missing '{key}'; an OpenAI preference row has 'input' (with 'messages'), 'preferred_output' "
                "and 'non_preferred_output'"
            )
    messages = row["input"].get("messages") if isinstance(row["input"], dict) else None
    if not isinstance(messages, list):
        raise RowError(
            "'input' must be an object with a 'messages' list (the conversation before the answers)"
        )
    parsed = _preference(
        {"prompt": messages, "chosen": row["preferred_output"], "rejected": row["non_preferred_output"]}
    )
    parsed.used = {"input", "preferred_output", "non_preferred_output"}
    return parsed


def _prompt(value: Any, notes: list[str]) -> list[dict[str, str]]:
    if isinstance(value, str):
        turns = _hh_turns(value, notes)
        if turns is not None:
            _check_contents(turns, "prompt")
            return turns
        if not value.strip():
            raise RowError("'prompt' is empty; give the user's request")
        return [{"role": "user", "content": value}]
    return _messages(value, "prompt", "role", "content")


def _answer(value: Any, key: str) -> list[dict[str, str]]:
    if isinstance(value, str) and not isinstance(_json_list(value), list):
        if not value.strip():
            raise RowError(f"'{key}' is empty; give the answer text")
        return [{"role": "assistant", "content": value.strip()}]
    return _messages(value, key, "role", "content")


def _conversation(value: Any, key: str, notes: list[str]) -> list[dict[str, str]]:
    if isinstance(value, str):
        turns = _hh_turns(value, notes)
        if turns is None:
            raise RowError(
                f"'{key}' is plain text but there is no 'prompt'; add the prompt, or give whole "
                "conversations as message lists"
            )
        _check_contents(turns, key)
        return turns
    return _messages(value, key, "role", "content")


def _hh_turns(text: str, notes: list[str]) -> list[dict[str, str]] | None:
    """Anthropic HH's `\n\nHuman: ...\n\nAssistant: ...` transcript as messages; None if it is not one.

    A transcript that ends with the cue "Assistant:" (a prompt) loses the cue. Two blocks of one speaker in a row
    (HH-RLHF has a few) are one turn split by a blank line: they are joined, and a note says so.
    """
    if not re.match(r"\s*Human:", text) or "\n\nAssistant:" not in text:
        return None
    body = text.lstrip(" \t")
    marks = list(_HH_TURN.finditer(body))
    turns: list[dict[str, str]] = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
        role = "user" if mark.group(1) == "Human" else "assistant"
        content = body[mark.end() : end].strip()
        if i == len(marks) - 1 and role == "assistant" and not content:
            break
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = f"{turns[-1]['content']}\n\n{content}".strip()
            notes.append(f"joined two consecutive {role} turns of the transcript into one")
            continue
        turns.append({"role": role, "content": content})
    return turns


def _check_contents(messages: list[dict[str, str]], where: str) -> None:
    for i, msg in enumerate(messages):
        if not msg["content"]:
            raise RowError(
                f"{where}: turn {i + 1} ({msg['role']}) is empty; give its text or remove the turn"
            )


def _messages(
    value: Any, where: str, role_key: str, content_key: str, aliases: dict[str, str] | None = None
) -> list[dict[str, str]]:
    items = _json_list(value)
    if not isinstance(items, list) or not items:
        raise RowError(f"missing '{where}' (a non-empty list of {{{role_key}, {content_key}}} objects)")
    out = []
    for i, msg in enumerate(items):
        if not isinstance(msg, dict):
            raise RowError(f"{where}[{i}] is not an object with {role_key} and {content_key}")
        raw_role = msg.get(role_key)
        role = aliases.get(raw_role.lower()) if aliases and isinstance(raw_role, str) else raw_role
        if role not in ROLES:
            hint = (
                " (tool calls are not trained; remove the tool turns)"
                if raw_role in ("tool", "function")
                else ""
            )
            names = ", ".join(sorted(aliases) if aliases else ROLES)
            raise RowError(f"{where}[{i}].{role_key} is {raw_role!r}{hint}; use one of {names}")
        content = _content(msg.get(content_key), f"{where}[{i}].{content_key}")
        if not content.strip():
            raise RowError(f"{where}[{i}].{content_key} is empty or not a string; give the {role} text")
        out.append({"role": role, "content": content})
    return out


def _content(value: Any, where: str) -> str:
    """A message's text; OpenAI's list of content parts is joined when every part is text."""
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        kinds = {p.get("type") for p in value}
        if kinds != {"text"} or not all(isinstance(p.get("text"), str) for p in value):
            raise RowError(
                f"{where} has non-text parts ({', '.join(sorted(map(str, kinds)))}); only text is "
                "trained, remove the other parts"
            )
        return "\n".join(p["text"] for p in value)
    return value if isinstance(value, str) else ""


def _json_list(value: Any) -> Any:
    """A list given as a JSON string (a CSV or Parquet cell) is read as the list."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value


def _text(row: dict[str, Any], key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        if value is None:
            raise RowError(f"missing '{key}'")
        raise RowError(f"'{key}' must be text, got {type(value).__name__}")
    text = str(value)
    if required and not text.strip():
        raise RowError(f"'{key}' is empty; give its text or remove the row")
    return text


def _with_system(row: dict[str, Any], messages: list[dict[str, str]], used: set[str]) -> list[dict[str, str]]:
    """A row-level `system` key becomes the first message (ShareGPT, Alpaca and pairs carry it that way)."""
    if "system" not in row or row["system"] in (None, ""):
        return messages
    used.add("system")
    system = _text(row, "system")
    if messages and messages[0]["role"] == "system":
        raise RowError("both a 'system' key and a system message; keep one")
    return [{"role": "system", "content": system}, *messages]


_PARSERS = {
    "feedback": _feedback,
    "chat": _chat,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
    "completion": _completion,
    "preference": _preference,
    "text": _plain_text,
}
