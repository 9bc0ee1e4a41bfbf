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
held back until the next token settles it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.models.generation import BASE_ADAPTER, DecodeBatch, Row, Sampling

log = logging.getLogger(__name__)


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
        self._batch = DecodeBatch(self.model, tokenizer.pad_token_id)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="specialize-engine", daemon=True)
        self.stats = {"steps": 0, "generated_tokens": 0, "rows": 0}

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)

    def submit(self, request: Request) -> None:
        self._queue.put(request)

    def encode_chat(self, messages: list[dict[str, str]], system_prompt: str | None = None) -> list[int]:
        """The token ids the model continues to answer `messages`, with `system_prompt` (the one an adapter was
        trained with) put first unless the conversation brings its own."""
        from specialize.data import render_prompt, with_system

        return self.encode_text(render_prompt(self.tokenizer, with_system(messages, system_prompt or None)))

    def encode_text(self, text: str) -> list[int]:
        """The token ids of `text` as it is, no template and no special tokens added."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

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
        for request in admitted:
            try:
                name = self._load(request.adapter)
            except Exception as exc:  # a broken adapter directory fails its own requests only
                log.exception("cannot load adapter %s", request.adapter and request.adapter.id)
                request.sink(Done("error", "", len(request.prompt), 0, f"cannot load model: {exc}"))
                continue
            rows.append(Row(request.prompt, request.sampling, adapter=name, tag=request))
        if rows and not self._batch.rows:
            self._batch.mixed = not _dora(rows[0].tag.adapter)
            if not self._batch.mixed:
                self.model.set_adapter(rows[0].adapter)
        self._batch.add(rows)

    def _compatible(self, request: Request, admitted: list[Request]) -> bool:
        """DoRA rows only share a batch with rows of the same adapter; LoRA and base rows mix freely."""
        others = [r.tag.adapter for r in self._batch.rows] + [r.adapter for r in admitted]
        if _dora(request.adapter) or any(_dora(a) for a in others):
            return all(a == request.adapter for a in others)
        return True

    def _load(self, adapter: Adapter | None) -> str:
        """The PEFT name of `adapter`, loading it (and dropping the least recently used) if needed."""
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
        in_use = {r.tag.adapter.id for r in self._batch.rows if r.tag.adapter is not None}
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
                request.sink(Done(reason, text, len(request.prompt), len(tokens)))
                finished.append(i)
        self._batch.remove(finished)

    def _fail_batch(self, message: str) -> None:
        for row in self._batch.remove(list(range(len(self._batch)))):
            row.tag.sink(Done("error", "", len(row.prompt), len(row.tokens), message))


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
    """An engine over the base model at `base_path`, in float32 (the fast path on CPUs)."""
    from specialize.models.loading import load_model

    model, tokenizer = load_model(base_path)
    return Engine(model, tokenizer, max_batch=max_batch, max_adapters=max_adapters)
