"""A Llama-architecture model and its tokenizer as one GGUF file for llama.cpp.

Reads an in-memory transformers model (already merged) and its tokenizer; writes `<path>.gguf` with `gguf`'s
`GGUFWriter`, following the names and metadata that llama.cpp's own `convert_hf_to_gguf.py` writes for Llama, so
`llama-cli`, `llama-server`, `llama-quantize` and transformers (`gguf_file=`) all read it. Called by `export.py`.

Only what the round trip through transformers can check is written: the default rotary embedding, a byte-level
BPE vocabulary, dense float weights. Anything else is refused with a pointer to `--format merged`, which
llama.cpp's converter can take further, rather than written approximately.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from specialize.errors import ExportError

DTYPES = ("f16", "f32")
F16_MAX = 65504.0

# The pre-tokenizer (how text is split before the merges) as llama.cpp names it, by its tokenizers.json shape.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}


def write_gguf(model: Any, tokenizer: Any, path: Path, dtype: str, name: str) -> None:
    """Write `model` and `tokenizer` to the GGUF file `path` with 2-D weights in `dtype`.

    Args:
        model: a float `LlamaForCausalLM` (adapters already merged).
        tokenizer: its fast tokenizer, with the chat template.
        path: the file to write.
        dtype: "f16" (half the size; what llama.cpp's converter writes by default) or "f32" (bit-exact).
        name: `general.name`, shown by llama.cpp when it loads the file.

    Raises:
        ExportError: the model or tokenizer uses something this writer does not convert, or a weight does not fit
            float16; the message names it and the way out.
    """
    import gguf

    config = model.config
    if config.model_type != "llama":
        raise ExportError(
            f"--format gguf supports Llama-architecture models; this run's model is {config.model_type!r}. "
            "Use --format merged and convert that folder with llama.cpp's convert_hf_to_gguf.py"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(
            f"--format gguf writes the default rotary embedding; this model uses rope_type "
            f"{rope['rope_type']!r}. Use --format merged and llama.cpp's convert_hf_to_gguf.py"
        )
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    _add_tokenizer(writer, tokenizer, config.vocab_size)
    _add_tensors(writer, model, dtype, heads, kv_heads)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_tensors(writer: Any, model: Any, dtype: str, heads: int, kv_heads: int) -> None:
    import gguf
    import numpy as np

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when the file has no output.weight, as transformers does
        gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(
                f"--format gguf: no llama.cpp name for the weight {key!r}; use --format merged and llama.cpp's "
                "convert_hf_to_gguf.py"
            )
        data = tensor.detach().float().numpy()
        if key.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, heads, heads)
        elif key.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, heads, kv_heads)
        # Norm vectors stay float32 as in llama.cpp's converter: they are tiny and its kernels expect them so.
        if dtype == "f16" and data.ndim > 1:
            peak = float(np.abs(data).max())
            if peak > F16_MAX:
                raise ExportError(
                    f"--dtype f16: the weight {key!r} holds {peak:g}, beyond float16's range; use --dtype f32"
                )
            data = data.astype(np.float16)
        writer.add_tensor(gguf_name, data)


def _permute(weights: Any, n_head: int, n_head_kv: int) -> Any:
    """llama.cpp's rotary layout for q/k rows (its converter's `LlamaModel.permute`; transformers undoes it)."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    """Vocabulary, token types, merges, special ids and chat template, as llama.cpp's `gpt2` BPE model."""
    import gguf

    doc = json.loads(tokenizer.backend_tokenizer.to_str())
    model = doc["model"]
    if model["type"] != "BPE" or (doc.get("decoder") or {}).get("type") != "ByteLevel":
        raise ExportError(
            f"--format gguf writes byte-level BPE tokenizers; this one is {model['type']} with decoder "
            f"{(doc.get('decoder') or {}).get('type')}. Use --format merged and llama.cpp's convert_hf_to_gguf.py"
        )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(doc.get("pre_tokenizer")))

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # rows the embedding matrix has beyond the tokenizer (padding to a multiple)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(
                gguf.TokenType.NORMAL
                if i not in added
                else gguf.TokenType.CONTROL
                if added[i].special
                else gguf.TokenType.USER_DEFINED
            )
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])

    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    # What encoding does, observed rather than read from flags that tokenizer classes spell differently.
    ids = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizer(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) for this split; it refuses a file whose name it does not know."""

    def shape(step: dict[str, Any]) -> dict[str, Any]:
        return {k: step.get(k) for k in ("type", "add_prefix_space", "use_regex", "individual_digits")}

    steps = [shape(s) for s in (pre or {}).get("pretokenizers", [pre] if pre else [])]
    if steps == [shape(_BYTE_LEVEL)]:
        return "gpt-2"
    if steps == [shape(_DIGITS), shape(_BYTE_LEVEL)]:
        return "smollm"
    raise ExportError(
        f"--format gguf: llama.cpp has no name for this tokenizer's pre-tokenizer ({pre}); use --format merged "
        "and llama.cpp's convert_hf_to_gguf.py, which identifies tokenizers by their output"
    )
