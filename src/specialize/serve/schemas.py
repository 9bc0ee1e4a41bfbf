"""Request bodies of the OpenAI-compatible API, as pydantic models.

Fields OpenAI accepts that do not change what this server does (`user`, `logit_bias`, `metadata`, ...) are
accepted and ignored, so unmodified clients work; the ones whose meaning a client relies on are either honoured or
refused with a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

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
    stop: str | list[str] | None = None
    seed: int | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return tuple(s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s)


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generation):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for the legacy completions endpoint
    echo: Literal[False] = False

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    def max_new_tokens(self) -> int | None:
        return self.max_tokens


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
