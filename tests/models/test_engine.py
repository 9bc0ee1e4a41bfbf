"""The inference engine on its own thread: DoRA next to LoRA, cancellation, broken adapters, held-back text."""

from __future__ import annotations

import queue

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from specialize.data import render_prompt
from specialize.models.engine import Adapter, Delta, Done, Engine, Request, _settled
from specialize.models.generation import Sampling


def make_adapter(base_dir, out, seed: int, dora: bool):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=32,
        target_modules=["q_proj", "v_proj", "down_proj"],
        use_dora=dora,
        init_lora_weights=False,
    )
    get_peft_model(base, config).save_pretrained(out)
    return Adapter(out.name, out, use_dora=dora)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    models = {
        "lora": make_adapter(tiny_model_dir, root / "lora", 1, dora=False),
        "dora": make_adapter(tiny_model_dir, root / "dora", 2, dora=True),
        "base": None,
    }
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    engine = Engine(base, tokenizer, max_batch=4, max_adapters=2).start()
    yield engine, tokenizer, models, tiny_model_dir
    engine.stop()


def prompt_ids(engine, text: str) -> list[int]:
    return engine.encode_chat([{"role": "user", "content": text}])


def submit(engine, model, ids, max_tokens=8, stop=()):
    events: queue.Queue = queue.Queue()
    request = Request(ids, model, Sampling(max_tokens), events.put, tuple(stop))
    engine.submit(request)
    return request, events


def finish(events) -> tuple[str, Done]:
    text = ""
    while True:
        event = events.get(timeout=60)
        if isinstance(event, Delta):
            text += event.text
        else:
            return text, event


def reference(base_dir, adapter: Adapter | None, ids: list[int], max_tokens=8) -> list[int]:
    net = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, adapter.path)
    with torch.no_grad():
        out = net.eval().generate(
            torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, pad_token_id=2
        )
    return out[0, len(ids) :].tolist()


def test_dora_lora_and_base_requests_in_flight_together_answer_as_alone(setup):
    engine, tokenizer, models, base_dir = setup
    ids = prompt_ids(engine, "What is the capital of France?")
    pending = [submit(engine, models[name], ids) for name in ("dora", "lora", "base", "dora", "lora")]
    texts = [finish(events) for _, events in pending]
    for (text, done), name in zip(texts, ("dora", "lora", "base", "dora", "lora"), strict=True):
        expected = reference(base_dir, models[name], ids)
        eos = tokenizer.eos_token_id
        expected = expected[: expected.index(eos)] if eos in expected else expected
        assert text == tokenizer.decode(expected, skip_special_tokens=True), name
        assert done.completion_tokens == len(expected)


def test_a_cancelled_request_ends_and_frees_its_row(setup):
    engine, tokenizer, models, _ = setup
    ids = prompt_ids(engine, "tell me a long story")
    request, events = submit(engine, models["lora"], ids, max_tokens=900)
    first = events.get(timeout=60)  # decoding has started
    request.cancelled.set()
    _, done = finish(events) if isinstance(first, Delta) else ("", first)
    assert done.finish_reason == "cancelled" and done.completion_tokens < 900, (first, done)
    assert engine.active_rows == 0
    waiting, events = submit(engine, models["base"], ids)
    waiting.cancelled.set()
    assert finish(events)[1].finish_reason in {"cancelled", "stop", "length"}


def test_adapters_admitted_together_are_all_kept_beyond_max_adapters(setup, tmp_path):
    """With room for one adapter, requests of two adapters (and the base) admitted in one step are all answered
    as alone: the adapter loaded second must not evict the first before its rows are pre-filled."""
    _, tokenizer, models, base_dir = setup
    other = make_adapter(base_dir, tmp_path / "lora2", 3, dora=False)
    engine = Engine(
        AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), tokenizer, max_adapters=1
    )
    ids = prompt_ids(engine, "What is the capital of France?")
    pending = [
        submit(engine, adapter, ids) for adapter in (models["lora"], other, None)
    ]  # queued, then started
    engine.start()
    try:
        for (_, events), adapter in zip(pending, (models["lora"], other, None), strict=True):
            text, done = finish(events)
            expected = reference(base_dir, adapter, ids)
            eos = tokenizer.eos_token_id
            expected = expected[: expected.index(eos)] if eos in expected else expected
            assert done.finish_reason in {"stop", "length"} and text == tokenizer.decode(
                expected, skip_special_tokens=True
            )
    finally:
        engine.stop()


def test_a_broken_adapter_fails_its_requests_only(setup, tmp_path):
    engine, tokenizer, models, _ = setup
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "adapter_config.json").write_text("{not json")
    broken = Adapter("broken", broken_dir)
    ids = prompt_ids(engine, "hello")
    _, bad = submit(engine, broken, ids)
    _, good = submit(engine, models["base"], ids)
    text, done = finish(bad)
    assert done.finish_reason == "error" and done.error.startswith("cannot load model")
    assert finish(good)[1].finish_reason in {"stop", "length"}


def test_the_engine_templates_and_tokenizes_messages_itself(setup):
    engine, tokenizer, _, _ = setup
    question = [{"role": "user", "content": "Where is my parcel?"}]
    rendered = render_prompt(tokenizer, question)
    assert engine.encode_chat(question) == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert engine.encode_text(rendered) == engine.encode_chat(question)
    trained = render_prompt(tokenizer, [{"role": "system", "content": "Answer in French."}, *question])
    assert engine.encode_chat(question, "Answer in French.") == engine.encode_text(trained)
    own = [{"role": "system", "content": "Be brief."}, *question]  # a conversation's own system prompt wins
    assert engine.encode_chat(own, "Answer in French.") == engine.encode_text(render_prompt(tokenizer, own))


def test_text_that_may_start_a_stop_sequence_is_held_back():
    assert _settled("The answer is <", ("</s>",)) == len("The answer is ")
    assert _settled("The answer is </", ("</s>",)) == len("The answer is ")
    assert _settled("The answer is 4", ("</s>",)) == len("The answer is 4")
    assert _settled("caf\ufffd", ()) == 3  # an incomplete UTF-8 character waits for its next byte
    assert _settled("\ufffd" * 10, ()) == 7  # but undecodable output is not held back for ever
