"""A tiny, offline stand-in for SmolLM2-135M-Instruct, for tests.

Tests must not download anything, and a real 135M-parameter model is far too slow for a unit test. This
module builds, in well under a second, a randomly initialised Llama model of a few hundred kilobytes
together with a byte-level BPE tokenizer trained on a built-in corpus. Both follow SmolLM2's conventions
(ChatML special tokens at ids 0-2, ``<|im_end|>`` as both EOS and padding, no BOS added on encode, the same
chat template shape), so code written against SmolLM2 runs unchanged on the tiny model.

The output is deterministic: the same inputs always give the same files.
"""

from __future__ import annotations

import pathlib

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant."

# SmolLM2's template, with a shorter default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TOKENIZER_VOCAB_SIZE = 512
MAX_POSITION_EMBEDDINGS = 1024

BUILTIN_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful AI assistant. Answer the question as clearly as you can.",
    "What is the capital of France? The capital of France is Paris.",
    "How do I reset my password? Open the settings page, choose security, and follow the instructions.",
    "The patient reported a mild headache and was advised to rest and drink plenty of water.",
    "A contract is an agreement between two or more parties that is enforceable by law.",
    "To install the package, run the install command and then restart your terminal.",
    "The invoice total is 1,250.00 dollars, due within 30 days of the date of issue.",
    "Machine learning models learn patterns from data and make predictions on new examples.",
    "Please summarise the following text in one sentence.",
    "Thank you for your message. I will get back to you as soon as possible.",
    "The weather today is sunny with a light breeze and a high of 24 degrees.",
    "In 1969, astronauts landed on the Moon for the first time in human history.",
    "Water boils at 100 degrees Celsius at sea level and freezes at 0 degrees.",
    "The function returns a list of strings, one for each line in the input file.",
    "Can you explain the difference between a virus and a bacterium?",
    "The user asked the assistant a question, and the assistant gave a short, correct answer.",
    "Good morning! How can I help you today?",
    "Our support team is available Monday to Friday, from 9 am to 5 pm.",
    "Read the instructions carefully before you start the exam.",
)


def _train_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """Trains the byte-level BPE tokenizer and wraps it the way SmolLM2's tokenizer is configured.

    Args:
        corpus: Training texts, in order.

    Returns:
        The tokenizer, with the special tokens at ids 0, 1 and 2 and the ChatML chat template set.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=IM_START,
        unk_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=IM_END,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITION_EMBEDDINGS,
    )


def build_tiny_model(path: pathlib.Path, corpus: list[str] | None = None) -> pathlib.Path:
    """Writes a tiny Llama chat model and its tokenizer, loadable with ``from_pretrained``.

    Args:
        path: Directory to write into; created if missing.
        corpus: Extra texts for the tokenizer to learn merges from, after the built-in English corpus.
            Any text can be encoded either way; this only makes encoding of such text more compact.

    Returns:
        ``path``, for use as ``AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path))``.
    """
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer([*BUILTIN_CORPUS, *(corpus or [])])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
