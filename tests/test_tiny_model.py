"""Checks that the tiny test model behaves like SmolLM2-135M-Instruct wherever other tests rely on it."""

import pathlib
import time

import pytest
import torch
from safetensors.torch import load_file
from tiny_model import DEFAULT_SYSTEM_PROMPT, IM_END, IM_START, SPECIAL_TOKENS, build_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]
UNICODE_TEXTS = [
    "Zürich – 東京 🙂",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew lines\r\n",
    "Ελληνικά, русский, العربية, हिन्दी",
    "e\u0301 (combining accent), \u200b (zero width space), \U0001f9d1\u200d\U0001f4bb",
]


def test_directory_loads_with_smollm2_conventions(tmp_path: pathlib.Path) -> None:
    path = build_tiny_model(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)

    assert path == tmp_path / "tiny"
    assert isinstance(model, LlamaForCausalLM)
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2]
    assert tokenizer.eos_token == tokenizer.pad_token == IM_END
    assert tokenizer.bos_token == IM_START
    assert 400 <= len(tokenizer) <= 1000
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert model.config.eos_token_id == model.config.pad_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.dtype == torch.float32
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_chat_template_matches_smollm2(tmp_path: pathlib.Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path))

    full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    prompt = tokenizer.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    with_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *CONVERSATION], tokenize=False
    )

    assert full == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
    )
    assert prompt == full.removesuffix("Paris.<|im_end|>\n")
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert DEFAULT_SYSTEM_PROMPT not in with_system


def test_generation_prompt_tokens_are_a_prefix_of_the_conversation_tokens(tmp_path: pathlib.Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path))
    full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    prompt = tokenizer.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)

    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]

    assert len(prompt_ids) < len(full_ids)
    assert full_ids[: len(prompt_ids)] == prompt_ids


def test_special_tokens_are_single_ids_and_no_bos_is_added(tmp_path: pathlib.Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path))
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]

    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id]
    # Three turns (system, user, assistant), each opened and closed by one special id.
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_START)) == 3
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_END)) == 3
    assert ids[0] == tokenizer.convert_tokens_to_ids(IM_START)
    # Like SmolLM2, encoding adds no BOS, so a rendered conversation never starts with it twice.
    assert tokenizer(rendered)["input_ids"] == ids
    assert tokenizer.decode(ids) == rendered


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_any_unicode_text_round_trips(tmp_path: pathlib.Path, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_extra_corpus_teaches_the_tokenizer_new_merges(tmp_path: pathlib.Path) -> None:
    word = "Zürich"
    plain = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "plain"))
    taught = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "taught", corpus=[f"{word} "] * 100))

    assert len(taught.tokenize(word)) < len(plain.tokenize(word))
    assert len(taught) == len(plain)


def test_forward_pass_gives_finite_logits(tmp_path: pathlib.Path) -> None:
    path = build_tiny_model(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    inputs = tokenizer(tokenizer.apply_chat_template(CONVERSATION, tokenize=False), return_tensors="pt")

    with torch.no_grad():
        logits = model(**inputs).logits

    assert logits.shape == (1, inputs["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_generate_continues_a_prompt(tmp_path: pathlib.Path) -> None:
    path = build_tiny_model(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tokenizer.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]

    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)

    assert output.shape[0] == 1
    assert prompt_length < output.shape[1] <= prompt_length + 5
    assert torch.equal(output[0, :prompt_length], inputs["input_ids"][0])


def test_build_is_fast_and_deterministic(tmp_path: pathlib.Path) -> None:
    start = time.perf_counter()
    first = build_tiny_model(tmp_path / "first")
    elapsed = time.perf_counter() - start
    second = build_tiny_model(tmp_path / "second")

    first_weights = load_file(first / "model.safetensors")
    second_weights = load_file(second / "model.safetensors")
    assert first_weights.keys() == second_weights.keys()
    for name, tensor in first_weights.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, second_weights[name]), name
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert elapsed < 5.0
