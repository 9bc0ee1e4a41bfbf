"""Counting the tokens of examples once templated: exactly with the base model's tokenizer, or estimated.

`prepare_data` always has the tokenizer. `specialize data check` must work before any model is downloaded: it
uses the tokenizer of the chosen (default: embedded) model when that model is already in the local cache, and
otherwise a word-piece estimate, and says which it used. The estimate (one token per digit, per punctuation
character and per word, plus one per further 7 letters of a long word) came within 5 % of SmolLM2's tokenizer on
the message texts of each of the eight shared datasets; the template adds 5 tokens per message and a default
system prompt of about 20.

The training-time estimate assumes a throughput measured on this project's reference machine: about 450 tokens/s
for SmolLM2-135M with LoRA on a 2-core CPU (489 measured by `make demo` on CUAD clauses, whose shared instructions
are computed once per batch; less on data without them), scaled by parameter count (the work per token of a transformer grows
about linearly with its parameters).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.data.load import Example
from specialize.data.template import render_conversation
from specialize.errors import DataError

REFERENCE_TOKENS_PER_SECOND = 450.0
REFERENCE_PARAMETERS = 134_515_008
TEMPLATE_TOKENS_PER_MESSAGE = 5
# Chat templates (SmolLM2's, Qwen's) insert a default system prompt when a conversation has none.
DEFAULT_SYSTEM_TOKENS = 20
_PIECE = re.compile(r" ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]+|\s+")


@dataclass
class TokenCounter:
    """Counts tokens of examples, exactly (`tokenizer` set) or by estimate; knows the model's context length."""

    tokenizer: Any
    model: str
    description: str
    context_length: int | None
    parameters: int | None

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def count(self, examples: list[Example]) -> list[int]:
        """Length in tokens of each example as trained (for a pair, the longer of its two conversations)."""
        if not examples:
            return []
        if self.tokenizer is None:
            return [_estimate_example(ex) for ex in examples]
        texts, owners = [], []
        problems = []
        for i, ex in enumerate(examples):
            conversations = [ex.messages] if ex.rejected is None else [ex.messages, ex.prompt + ex.rejected]
            if ex.text is not None:
                texts.append(ex.text)
                owners.append(i)
                continue
            for messages in conversations:
                try:
                    texts.append(render_conversation(self.tokenizer, messages))
                except (
                    Exception
                ) as exc:  # jinja templates raise their own errors, e.g. "System role not supported"
                    problems.append(
                        f"{ex.where}: the chat template of {self.model} cannot render this conversation "
                        f"({exc}); drop the system message or choose another base model"
                    )
                    texts.append("")
                owners.append(i)
        if problems:
            raise DataError(
                f"{len(problems)} example(s) cannot be templated:\n" + "\n".join(problems[:20]), problems
            )
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths = [0] * len(examples)
        for owner, tokens, text_row in zip(owners, ids, texts, strict=True):
            extra = (
                1 if examples[owner].text is not None and text_row else 0
            )  # encode_text appends end-of-sequence
            lengths[owner] = max(lengths[owner], len(tokens) + extra)
        return lengths

    def split_text(self, text: str, max_tokens: int) -> list[str]:
        """Consecutive pieces of `text` of at most `max_tokens` tokens each (with the end token), cut at token
        boundaries; a long document for continued pre-training is chunked, not rejected."""
        budget = max_tokens - 1
        if self.tokenizer is None:
            size = max(1, int(budget * len(text) / max(1, _estimate_text(text))))
            return [text[i : i + size] for i in range(0, len(text), size)]
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ]
        cuts = [offsets[i][0] for i in range(budget, len(offsets), budget)]
        bounds = [0, *cuts, len(text)]
        return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if text[a:b].strip()]


def counter_for_tokenizer(tokenizer: Any) -> TokenCounter:
    """An exact counter for a loaded tokenizer (the one `prepare_data` is given)."""
    path = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    name, context, parameters = _model_facts(path)
    max_length = getattr(tokenizer, "model_max_length", None)
    if isinstance(max_length, int) and max_length < 10**8:
        context = max_length
    return TokenCounter(tokenizer, name, f"{name} tokenizer (exact)", context, parameters)


def counter_for_check(base_model: str | None) -> TokenCounter:
    """The counter `data check` uses: the model's tokenizer if it is on disk, else the estimate (never a download).

    Raises:
        ModelNotFoundError: `base_model` is neither a catalogue name nor a model directory.
    """
    from specialize.config import DEFAULT_BASE_MODEL
    from specialize.models import CATALOG, check_model, list_models

    name = base_model or DEFAULT_BASE_MODEL
    check_model(name)
    path = Path(name).expanduser()
    if not path.is_dir():
        info = next(i for i in list_models() if i.entry.name == CATALOG[name.lower()].name)
        if not info.cached:
            entry = info.entry
            return TokenCounter(
                None,
                entry.name,
                f"estimate (~5% error): {entry.name} is not in the local cache; "
                f"`specialize models pull {entry.name}` gives exact counts",
                entry.context_length,
                entry.parameters,
            )
        path = info.path
    try:
        from transformers import AutoTokenizer

        return counter_for_tokenizer(AutoTokenizer.from_pretrained(path))
    except Exception as exc:  # a damaged cache must not stop a data check; the estimate still answers
        facts = _model_facts(path)
        return TokenCounter(
            None,
            facts[0],
            f"estimate (~5% error): the tokenizer in {path} cannot be loaded ({type(exc).__name__})",
            facts[1],
            facts[2],
        )


def training_estimate(tokens: int, counter: TokenCounter, tokens_per_second: float | None) -> dict[str, Any]:
    """Tokens and time per epoch, and how the throughput was chosen."""
    if tokens_per_second is not None:
        rate, basis = tokens_per_second, "data.tokens_per_second"
    elif counter.parameters:
        rate = REFERENCE_TOKENS_PER_SECOND * REFERENCE_PARAMETERS / counter.parameters
        basis = (
            f"{REFERENCE_TOKENS_PER_SECOND:g} tokens/s for a {REFERENCE_PARAMETERS / 1e6:.0f}M model with LoRA "
            f"on a 2-core CPU, scaled to {counter.parameters / 1e6:,.0f}M parameters; set "
            "data.tokens_per_second for a GPU or another machine"
        )
    else:
        return {
            "model": counter.model,
            "tokens_per_epoch": tokens,
            "tokens_per_second": None,
            "seconds_per_epoch": None,
            "basis": "unknown model size; set data.tokens_per_second",
        }
    seconds = tokens / rate
    return {
        "model": counter.model,
        "parameters": counter.parameters,
        "tokens_per_epoch": tokens,
        "tokens_per_second": round(rate, 1),
        "seconds_per_epoch": round(seconds),
        "time_per_epoch": _duration(seconds),
        "basis": f"estimate: {basis}; padding adds to it",
    }


def _duration(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _estimate_text(text: str) -> int:
    n = 0
    for piece in _PIECE.findall(text):
        word = piece.strip()
        if not word:
            n += len(piece) > 1
        elif word.isalpha():
            n += 1 + (len(word) - 1) // 7
        elif word.isdigit():
            n += 1
        else:
            n += len(word)
    return n


def _estimate_example(ex: Example) -> int:
    if ex.text is not None:
        return _estimate_text(ex.text) + 1
    conversations = [ex.messages] if ex.rejected is None else [ex.messages, ex.prompt + ex.rejected]
    return max(
        sum(_estimate_text(m["content"]) + TEMPLATE_TOKENS_PER_MESSAGE for m in conv)
        + (DEFAULT_SYSTEM_TOKENS if conv[0]["role"] != "system" else 0)
        for conv in conversations
    )


def _model_facts(path: Path) -> tuple[str, int | None, int | None]:
    """Name, context length and parameter count of a model directory (catalogue figures for a cached entry)."""
    from specialize.models import CATALOG

    entry = CATALOG.get(path.name.lower())
    if entry is not None:
        return entry.name, entry.context_length, entry.parameters
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return path.name or "unknown model", None, None
    return path.name, config.get("max_position_embeddings"), _parameters(config)


def _parameters(config: dict[str, Any]) -> int | None:
    """Parameters of a Llama-style decoder from its config (embeddings, attention with grouped KV, gated MLP)."""
    try:
        h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
        inter = config.get("intermediate_size", 4 * h)
        heads = config.get("num_attention_heads", 1)
        kv = h * config.get("num_key_value_heads", heads) // heads
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings", True) else 2)
    return int(embeddings + layers * (2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h) + h)
