"""Request bodies of the OpenAI-compatible API, as pydantic models.

Fields OpenAI accepts that do not change what this server does (`user`, `metadata`, `store`, ...) are accepted
and ignored, so unmodified clients work; the ones whose meaning a client relies on (`tools`, `response_format`,
`logit_bias`, ...) are either honoured or refused with a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

# OpenAI's own limit for chat; its legacy completions allowed 5, vLLM allows 20 there too.
MAX_TOP_LOGPROBS = 20
MAX_ITEMS = 2048  # messages per request, parts per message, prompts per request


def _at_most(n: int) -> BeforeValidator:
    """A list of at most `n` items, counted before its items are validated.

    pydantic validates every item of a list before it checks the list's length, holding the GIL throughout: the
    100,000 messages a 4 MB body can hold stalled every other request of the server for 2 s. Counting first
    refuses them at once.
    """

    def check(value: Any) -> Any:
        if isinstance(value, list) and len(value) > n:
            raise PydanticCustomError(
                "too_long", "at most {n} items (got {got})", {"n": n, "got": len(value)}
            )
        return value

    return BeforeValidator(check)


def _unsupported(what: str) -> AfterValidator:
    """A field the server does not honour: refused (error type `unsupported`) when given a value that matters."""

    def check(value: Any) -> Any:
        if value:
            raise PydanticCustomError("unsupported", f"{what} is not supported by this server")
        return value

    return AfterValidator(check)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str | list[TextPart], _at_most(MAX_ITEMS)]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Annotated[str | list[str] | None, _at_most(4)] = None
    seed: int | None = None
    logit_bias: Annotated[Any, _unsupported("logit_bias")] = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return tuple(s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s)


# Streamed text is sent as it settles, which is not token by token; so log-probabilities come with whole answers.
_WHOLE_ONLY = "{what} returned with whole answers only; set stream to false"


class ResponseFormat(_Body):
    type: str


class ChatCompletionRequest(_Generation):
    messages: Annotated[list[ChatMessage], _at_most(MAX_ITEMS)] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Annotated[Any, _unsupported("tools (function calling)")] = None
    functions: Annotated[Any, _unsupported("functions (function calling)")] = None
    response_format: ResponseFormat | None = None

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: ResponseFormat | None) -> ResponseFormat | None:
        if value is not None and value.type != "text":
            raise PydanticCustomError(
                "unsupported",
                "response_format {kind} is not supported by this server; only text answers are",
                {"kind": repr(value.type)},
            )
        return value

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def top_logprobs_asked(self) -> int | None:
        """How many alternatives to report per token; None when no log-probabilities are asked for."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def conflict(self) -> tuple[str, str] | None:
        """A field whose value this server does not serve with the others: (field, why); None when all fit."""
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs set to true"
        if self.stream and self.logprobs:
            return "logprobs", _WHOLE_ONLY.format(what="logprobs are")
        return None


def _prompts(value: Any) -> list[str] | list[list[int]]:
    """OpenAI's four shapes of `prompt`, as a list of texts or a list of token id lists; one validator instead of
    a union, whose errors would name the union member (`prompt.list[int]`) instead of the field."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and len(value) > MAX_ITEMS:
        raise PydanticCustomError(
            "too_long", "at most {n} prompts (got {got})", {"n": MAX_ITEMS, "got": len(value)}
        )
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [value]
        if all(
            isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
            for v in value
        ):
            return value
    raise PydanticCustomError(
        "prompt", "must be a string, a list of strings, a list of token ids or a list of lists of token ids"
    )


class CompletionRequest(_Generation):
    prompt: Annotated[Any, AfterValidator(_prompts)]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for the legacy completions endpoint
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    suffix: Annotated[str | None, _unsupported("suffix (text insertion)")] = None

    def prompts(self) -> list[str] | list[list[int]]:
        prompts: list[str] | list[list[int]] = self.prompt
        return prompts

    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def top_logprobs_asked(self) -> int | None:
        """How many alternatives to report per token; None when no log-probabilities are asked for."""
        return self.logprobs

    def conflict(self) -> tuple[str, str] | None:
        """A field whose value this server does not serve with the others: (field, why); None when all fit."""
        if self.stream and self.echo:
            return "echo", _WHOLE_ONLY.format(what="echo is")
        if self.stream and self.logprobs is not None:
            return "logprobs", _WHOLE_ONLY.format(what="logprobs are")
        return None


class FeedbackRequest(_Body):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1)
    rating: float | None = Field(None, ge=-1.0, le=5.0, description="-1/1 thumbs, or 1-5 stars")
    correction: str | None = Field(None, description="the answer the model should have given")
    comment: str | None = None

    def has_content(self) -> bool:
        return self.rating is not None or bool(self.correction)


def field_path(loc: tuple[Any, ...]) -> str:
    """`messages[0].role` from pydantic's ('messages', 0, 'role')."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _auto_or(kind: type[int] | type[float], low: float, high: float) -> AfterValidator:
    """ "auto", or a number of `kind` in [low, high]; one validator instead of a union, whose errors would name
    the union member ('hyperparameters.n_epochs.constrained-int') instead of the field."""

    def check(value: Any) -> Any:
        if value == "auto":
            return value
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (kind is int and not float(value).is_integer()) or not low < value <= high:
            what = "an integer" if kind is int else "a number"
            raise ValueError(f'must be "auto" or {what} above {low:g} and at most {high:g}')
        return kind(value)

    return AfterValidator(check)


class SupervisedHyperparameters(_Body):
    """OpenAI's supervised hyperparameters; "auto" takes the server's defaults."""

    n_epochs: Annotated[Any, _auto_or(int, 0, 50)] = "auto"
    batch_size: Annotated[Any, _auto_or(int, 0, 256)] = "auto"
    learning_rate_multiplier: Annotated[Any, _auto_or(float, 0, 10)] = "auto"


class SupervisedMethod(_Body):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class DpoHyperparameters(SupervisedHyperparameters):
    """OpenAI's DPO hyperparameters: the supervised ones and `beta`."""

    beta: Annotated[Any, _auto_or(float, 0, 2)] = "auto"


class DpoMethod(_Body):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class FineTuningMethod(_Body):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None


class FineTuningJobRequest(_Body):
    """`POST /v1/fine_tuning/jobs`; `integrations` and `metadata` are accepted and ignored."""

    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: SupervisedHyperparameters | None = None  # the legacy place, before `method`
    method: FineTuningMethod | None = None
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
