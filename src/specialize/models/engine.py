"""The inference engine behind `specialize serve`: one base model, many adapters, requests decoded together.

Callers hand it chat messages (or plain text) and get text back: templating, tokenizing and detokenizing happen
here, next to the model and its tokenizer, so the HTTP layer never touches a tokenizer.

One thread owns the model. Requests wait in a queue; between decoding steps the thread admits as many as the batch
has room for (pre-filling them together), so a new request starts within one step instead of waiting for the
running batch to end, and a finished one leaves at once. Rows of different LoRA adapters share each forward pass
(PEFT's mixed-adapter batches); DoRA adapters cannot be mixed, so a batch holding one serves that adapter only.
Adapters are loaded on first use and the least recently used is dropped beyond `max_adapters`.

Results go back through each request's `sink`, called on the engine thread: a server hands them to its event
loop. Text is streamed as it becomes final: a partial UTF-8 character or the beginning of a stop sequence is
held back until the next token settles it. A request may ask for log-probabilities, of its answer's tokens and
(`echo`) of its prompt's, as evaluation harnesses score multiple-choice answers with.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.errors import SpecializeError
from specialize.models.generation import BASE_ADAPTER, DecodeBatch, Row, Sampling, TokenLogprob

log = logging.getLogger(__name__)


class PromptTooLongError(SpecializeError):
    """A prompt certainly over the limit it was encoded for, found without tokenizing it all."""

    def __init__(self, at_least: int, limit: int) -> None:
        super().__init__(f"the prompt has at least {at_least} tokens, more than {limit}")
        self.at_least, self.limit = at_least, limit


@dataclass(frozen=True)
class Token:
    """A token as callers see it: its text, its exact bytes (a token may hold part of a UTF-8 character), its
    log-probability (None for a prompt's first token, which nothing predicts) and the likeliest tokens there."""

    text: str
    bytes: bytes
    logprob: float | None
    top: tuple[Token, ...] = ()


@dataclass(frozen=True)
class Delta:
    """New text of a request."""

    text: str


@dataclass(frozen=True)
class Done:
    """A request ended: `finish_reason` is "stop" (end of turn or a stop sequence), "length" or "error"."""

    finish_reason: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    logprobs: list[Token] | None = None  # the answer's tokens, when the request asked for them
    prompt_logprobs: list[Token] | None = None  # every prompt token, when the request echoes its prompt


Event = Delta | Done


@dataclass(frozen=True)
class Adapter:
    """A fine-tuned adapter the engine may load: `id` names it to its callers (and in the LRU cache)."""

    id: str
    path: Path
    use_dora: bool = False


@dataclass
class Request:
    """A prompt to continue (token ids from `Engine.encode_chat` / `encode_text`) with the base model
    (`adapter=None`) or one adapter; `sink` receives its events on the engine thread."""

    prompt: list[int]
    adapter: Adapter | None
    sampling: Sampling
    sink: Callable[[Event], None]
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # report each answer token's log-probability and this many alternatives
    echo: bool = False  # and those of the prompt's tokens
    cancelled: threading.Event = field(default_factory=threading.Event)
    emitted: int = 0  # characters of the answer already sent


class Engine:
    """Decode requests for a base model and its adapters on one background thread."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 16, max_adapters: int = 4) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_adapters = max_adapters
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self._queue: queue.Queue[Request] = queue.Queue()
        self._waiting: list[Request] = []
        self._adapters: OrderedDict[str, str] = OrderedDict()  # adapter id -> PEFT adapter name, LRU order
        self._names = 0
        # Rows of different adapters share a pass; `mixed` is set again per batch, off where DoRA is among them.
        self._batch = DecodeBatch(self.model, tokenizer.pad_token_id, mixed=True)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="specialize-engine", daemon=True)
        self.stats = {"steps": 0, "generated_tokens": 0, "rows": 0}
        self.vocab_size = len(tokenizer)
        self._bytes: dict[int, bytes] = {}
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._byte_level = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"
        # The most UTF-8 bytes one token stands for: a text of n bytes has at least n / this many tokens.
        self._longest_token = max(len(self.token_bytes(i)) for i in range(self.vocab_size))

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)

    def submit(self, request: Request) -> None:
        self._queue.put(request)

    def encode_chat(
        self, messages: list[dict[str, str]], system_prompt: str | None = None, limit: int | None = None
    ) -> list[int]:
        """The token ids the model continues to answer `messages`, with `system_prompt` (the one an adapter was
        trained with) put first unless the conversation brings its own.

        Raises:
            PromptTooLongError: the prompt has more than `limit` tokens for sure (see `encode_text`).
        """
        from specialize.data import render_prompt, with_system

        rendered = render_prompt(self.tokenizer, with_system(messages, system_prompt or None))
        return self.encode_text(rendered, limit)

    def encode_text(self, text: str, limit: int | None = None) -> list[int]:
        """The token ids of `text` as it is, no template and no special tokens added.

        Tokenizing takes about a second per megabyte: a text longer in bytes than `limit` tokens of the longest
        token can be raises `PromptTooLongError` at once instead, for it cannot fit.

        Raises:
            PromptTooLongError: as above.
        """
        if limit is not None:
            at_least = -(-len(text.encode("utf-8", "surrogatepass")) // self._longest_token)
            if at_least > limit:
                raise PromptTooLongError(at_least, limit)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))

    def token_bytes(self, token: int) -> bytes:
        """The bytes of text `token` stands for (a byte-level token may hold part of a UTF-8 character)."""
        known = self._bytes.get(token)
        if known is not None:
            return known
        piece = self.tokenizer.convert_ids_to_tokens(token) or ""
        if self._byte_level and token not in self.tokenizer.all_special_ids:
            byte_of = _byte_decoder()
            decoded = bytes(byte_of[c] for c in piece if c in byte_of)
        elif (
            len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")
        ):  # SentencePiece byte fallback
            decoded = bytes([int(piece[3:5], 16)])
        else:
            decoded = piece.replace("\u2581", " ").encode("utf-8")
        self._bytes[token] = decoded
        return decoded

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() + len(self._waiting)

    @property
    def active_rows(self) -> int:
        return len(self._batch)

    @property
    def loaded_adapters(self) -> int:
        return len(self._adapters)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._admit()
                if not self._batch.rows:
                    continue
                self._batch.step()
                self.stats["steps"] += 1
                self.stats["rows"] += len(self._batch)
                self._emit()
            except Exception as exc:  # a failed step must not take the server down: fail its rows, go on
                log.exception("decoding step failed")
                self._fail_batch(f"{type(exc).__name__}: {exc}")

    def _admit(self) -> None:
        """Move queued requests into the batch while it has room; block briefly when there is nothing to do."""
        try:
            block = not self._batch.rows and not self._waiting
            while True:
                self._waiting.append(self._queue.get(block=block, timeout=0.1 if block else None))
                block = False
        except queue.Empty:
            pass
        room = self.max_batch - len(self._batch)
        if room <= 0 or not self._waiting:
            return
        admitted: list[Request] = []
        for request in list(self._waiting):
            if len(admitted) == room:
                break
            if request.cancelled.is_set():  # its client left while it waited
                self._waiting.remove(request)
                request.sink(Done("cancelled", "", len(request.prompt), 0))
                continue
            if not self._compatible(request, admitted):
                continue
            self._waiting.remove(request)
            admitted.append(request)
        rows = []
        needed = {r.adapter.id for r in admitted if r.adapter is not None}
        for request in admitted:
            try:
                name = self._load(request.adapter, needed)
            except Exception as exc:  # a broken adapter directory fails its own requests only
                log.exception("cannot load adapter %s", request.adapter and request.adapter.id)
                request.sink(Done("error", "", len(request.prompt), 0, f"cannot load model: {exc}"))
                continue
            rows.append(
                Row(
                    request.prompt,
                    request.sampling,
                    adapter=name,
                    tag=request,
                    logprobs=request.logprobs,
                    echo=request.echo,
                )
            )
        if rows and not self._batch.rows:
            self._batch.mixed = not _dora(rows[0].tag.adapter)
            if not self._batch.mixed:
                self.model.set_adapter(rows[0].adapter)
        try:
            self._batch.add(rows)
        except (
            Exception
        ) as exc:  # a failed pre-fill ends its requests with an error, never leaves them waiting
            log.exception("pre-filling %d requests failed", len(rows))
            for row in rows:
                if not any(row is r for r in self._batch.rows):
                    row.tag.sink(Done("error", "", len(row.prompt), 0, f"{type(exc).__name__}: {exc}"))

    def _compatible(self, request: Request, admitted: list[Request]) -> bool:
        """DoRA rows only share a batch with rows of the same adapter; LoRA and base rows mix freely."""
        others = [r.tag.adapter for r in self._batch.rows] + [r.adapter for r in admitted]
        if _dora(request.adapter) or any(_dora(a) for a in others):
            return all(a == request.adapter for a in others)
        return True

    def _load(self, adapter: Adapter | None, needed: set[str]) -> str:
        """The PEFT name of `adapter`, loading it if needed, and dropping the least recently used adapters beyond
        `max_adapters` that no row in the batch uses and no request being admitted (`needed`) is about to."""
        if adapter is None:
            return BASE_ADAPTER
        if adapter.id in self._adapters:
            self._adapters.move_to_end(adapter.id)
            return self._adapters[adapter.id]
        self._names += 1
        name = f"adapter{self._names}"  # run ids may hold dots, which PEFT adapter names cannot
        started = time.perf_counter()
        if hasattr(self.model, "load_adapter") and hasattr(self.model, "peft_config"):
            self.model.load_adapter(str(adapter.path), adapter_name=name)
        else:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter.path), adapter_name=name).eval()
            self._batch.model = self.model
        self._adapters[adapter.id] = name
        log.info("loaded adapter %s in %.2f s", adapter.id, time.perf_counter() - started)
        in_use = {r.tag.adapter.id for r in self._batch.rows if r.tag.adapter is not None} | needed
        for old in list(self._adapters):
            if len(self._adapters) <= self.max_adapters:
                break
            if old not in in_use and old != adapter.id:
                self.model.delete_adapter(self._adapters.pop(old))
        return name

    def _emit(self) -> None:
        """Send each row's settled new text; end rows at end of turn, a stop sequence, max_tokens or cancel."""
        eos = self.tokenizer.eos_token_id
        finished = []
        for i, row in enumerate(self._batch.rows):
            request: Request = row.tag
            ended = row.tokens[-1] == eos
            tokens = row.tokens[:-1] if ended else row.tokens
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            reason = "stop" if ended else "length" if len(row.tokens) >= row.sampling.max_tokens else None
            cut = min((text.find(s) for s in request.stop if s in text), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
            if request.cancelled.is_set():
                reason = "cancelled"
            safe = len(text) if reason else _settled(text, request.stop)
            if safe > request.emitted:
                request.sink(Delta(text[request.emitted : safe]))
                request.emitted = safe
            if reason:
                self.stats["generated_tokens"] += len(tokens)
                request.sink(self._done(row, reason, text, tokens))
                finished.append(i)
        self._batch.remove(finished)

    def _done(self, row: Row, reason: str, text: str, tokens: list[int]) -> Done:
        """The end of a row, with the log-probabilities it asked for: of the tokens its answer `text` is made of
        (an answer cut at a stop sequence keeps the tokens up to the cut)."""
        request: Request = row.tag
        answer = None
        if request.logprobs is not None:
            kept = len(tokens)
            while kept > 0 and len(
                self.tokenizer.decode(tokens[: kept - 1], skip_special_tokens=True)
            ) >= len(text):
                kept -= 1
            answer = [self._token(t) for t in row.token_logprobs[:kept]]
        prompt = None
        if request.echo:
            first = Token(*self._text_bytes(request.prompt[0]), None) if request.prompt else None
            prompt = ([first] if first else []) + [self._token(t) for t in row.prompt_logprobs]
        return Done(reason, text, len(request.prompt), len(tokens), None, answer, prompt)

    def _text_bytes(self, token: int) -> tuple[str, bytes]:
        raw = self.token_bytes(token)
        return raw.decode("utf-8", errors="replace"), raw

    def _token(self, entry: TokenLogprob) -> Token:
        top = tuple(Token(*self._text_bytes(t), lp) for t, lp in entry.top)
        return Token(*self._text_bytes(entry.token), entry.logprob, top)

    def _fail_batch(self, message: str) -> None:
        for row in self._batch.remove(list(range(len(self._batch)))):
            row.tag.sink(Done("error", "", len(row.prompt), len(row.tokens), message))


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet read backwards: the character a byte-level BPE token spells a byte with ->
    that byte (transformers keeps the forward table in `convert_slow_tokenizer.bytes_to_unicode`)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _dora(adapter: Adapter | None) -> bool:
    return adapter is not None and adapter.use_dora


def _settled(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be sent: not a trailing partial character nor a possible start of a stop sequence."""
    # An incomplete UTF-8 character decodes as up to three replacement characters; more are really in the text.
    end = max(len(text.rstrip("\ufffd")), len(text) - 3)
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:k]):
                end = min(end, len(text[:end]) - k)
                break
    return end


def load_engine(base_path: Path, max_batch: int, max_adapters: int) -> Engine:
    """An engine over the base model at `base_path`: on a CUDA GPU in bfloat16 where there is one, else on the
    CPU in float32 (the fast path there)."""
    from specialize.models.loading import for_inference, load_model

    model, tokenizer = load_model(base_path)
    model = for_inference(model)
    return Engine(model, tokenizer, max_batch=max_batch, max_adapters=max_adapters)
