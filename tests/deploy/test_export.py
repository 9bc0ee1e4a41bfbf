"""`specialize export`: each format loads back in the tool it is for and computes what the run's model computes."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import torch
from conftest import CompletedRun, FinishRun

from specialize.cli.main import main
from specialize.deploy import export_run
from specialize.errors import ExportError, RunNotFoundError

PROMPTS = (
    [{"role": "user", "content": "Label this message: please refund the invoice 7"}],
    [{"role": "user", "content": "where is my delivery? order 1,250.00"}],
    [{"role": "user", "content": "The quick brown fox, 2024 — naïve café"}],
)
# Every export here is of a few-step run on the tiny model, so evaluation is cut to one system and a few examples.
QUICK_EVAL = {"systems": ["fine_tuned"], "max_examples": 4}


@pytest.fixture(scope="module")
def lora_run(finish_run: FinishRun) -> CompletedRun:
    # A learning rate high enough that the adapter moves the logits far beyond the tolerances below.
    return finish_run(train={"max_steps": 4, "learning_rate": 5e-2}, eval=QUICK_EVAL)


@pytest.fixture(scope="module")
def dora_run(finish_run: FinishRun) -> CompletedRun:
    return finish_run(train={"max_steps": 4, "learning_rate": 5e-2, "adapter": "dora"}, eval=QUICK_EVAL)


@pytest.fixture(scope="module")
def full_run(finish_run: FinishRun) -> CompletedRun:
    return finish_run(train={"max_steps": 2, "adapter": None, "learning_rate": 1e-3}, eval=QUICK_EVAL)


def _ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def _peft_model(run: CompletedRun) -> tuple[Any, Any]:
    """The run's model as training left it: the base with the adapter on top, unmerged."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from specialize.models import load_model

    adapter = run.run_dir.train / "adapter"
    base, _ = load_model(run.config.base_model)
    return PeftModel.from_pretrained(base, adapter).eval(), AutoTokenizer.from_pretrained(adapter)


def _export(run: CompletedRun, fmt: str, out: pathlib.Path, *extra: str) -> int:
    return main(
        ["--quiet", "export", run.run_dir.id, "--format", fmt, "--out", str(out), "--registry"]
        + [run.config.registry_url, *extra]
    )


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_merged_export_loads_with_transformers_and_matches_the_adapter(
    adapter, request, tmp_path, capsys
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lora_run = request.getfixturevalue(f"{adapter}_run")
    out = tmp_path / "merged"
    assert _export(lora_run, "merged", out) == 0
    assert capsys.readouterr().out.strip() == str(out)

    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    reference, ref_tokenizer = _peft_model(lora_run)
    base = AutoModelForCausalLM.from_pretrained(lora_run.config.base_model, dtype=torch.float32).eval()
    assert tokenizer.chat_template == ref_tokenizer.chat_template
    assert merged.generation_config.eos_token_id == tokenizer.eos_token_id
    for messages in PROMPTS:
        ids = _ids(tokenizer, messages)
        assert ids == _ids(ref_tokenizer, messages)
        expected = _logits(reference, ids)
        torch.testing.assert_close(_logits(merged, ids), expected, atol=1e-5, rtol=0)
        assert (_logits(base, ids) - expected).abs().max() > 1e-2, "precondition: the adapter changes nothing"


def test_adapter_export_loads_with_peft_and_names_its_base(lora_run, tmp_path) -> None:
    from peft import PeftModel

    from specialize.models import load_model

    out = export_run(lora_run.run_dir.id, "adapter", tmp_path / "adapter", lora_run.config.registry_url)

    doc = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    assert doc["base_model_name_or_path"] == str(pathlib.Path(lora_run.config.base_model).resolve())
    assert (out / "adapter_model.safetensors").is_file()
    assert {"tokenizer.json", "chat_template.jinja"} <= {p.name for p in out.iterdir()}
    reloaded = PeftModel.from_pretrained(load_model(lora_run.config.base_model)[0], out).eval()
    reference, tokenizer = _peft_model(lora_run)
    for messages in PROMPTS:
        ids = _ids(tokenizer, messages)
        torch.testing.assert_close(_logits(reloaded, ids), _logits(reference, ids), atol=0, rtol=0)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith(lora_run.run_dir.model_card.read_text(encoding="utf-8").rstrip())
    assert "PeftModel.from_pretrained" in card and "format: adapter" in card


def test_adapter_of_a_catalogue_model_names_its_hub_id(lora_run, tmp_path) -> None:
    # The same adapter exported from a run whose config names the catalogue model: only the config differs.
    from specialize.deploy.export import _base_model_name
    from specialize.models import CATALOG

    config = lora_run.config.model_copy(update={"base_model": "SmolLM2-135M-Instruct"})
    assert _base_model_name(config) == CATALOG["smollm2-135m-instruct"].hub_id


# f16 rounds each weight to 11 significant bits: about 1e-4 off in these logits, where q/k rows left in the
# transformers layout put them 3e-2 off. Absolute tolerances: the tiny model's logits are all close to 0.
@pytest.mark.parametrize(("dtype", "tolerance"), [("f32", 1e-5), ("f16", 5e-4)])
def test_gguf_export_loads_back_with_the_same_tokens_and_logits(lora_run, tmp_path, dtype, tolerance) -> None:
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "gguf"
    assert _export(lora_run, "gguf", out, "--dtype", dtype) == 0

    (file,) = out.glob("*.gguf")
    assert file.name == f"{lora_run.run_dir.id}-{dtype}.gguf"
    fields = gguf.GGUFReader(file).fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "gpt2"
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=file.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=file.name)
    reference, ref_tokenizer = _peft_model(lora_run)
    assert tokenizer.chat_template == ref_tokenizer.chat_template
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        ref_tokenizer.bos_token_id,
        ref_tokenizer.eos_token_id,
        ref_tokenizer.pad_token_id,
    )
    for messages in PROMPTS:
        ids = _ids(tokenizer, messages)
        assert ids == _ids(ref_tokenizer, messages)
        torch.testing.assert_close(_logits(loaded, ids), _logits(reference, ids), atol=tolerance, rtol=0)
    assert "llama-cli -m" in (out / "README.md").read_text(encoding="utf-8")


def test_full_fine_tune_exports_the_trained_model(full_run, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    out = export_run(str(full_run.run_dir.root), "merged", tmp_path / "merged", full_run.config.registry_url)

    trained = AutoModelForCausalLM.from_pretrained(full_run.run_dir.train / "model", dtype=torch.float32)
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    expected = trained.state_dict()
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_exports_are_recorded_in_the_registry(full_run, tmp_path) -> None:
    out = export_run(full_run.run_dir.id, "gguf", tmp_path / "g", full_run.config.registry_url, dtype="f32")

    kinds = {(a["kind"], a["path"]) for a in full_run.registry.get_artifacts(full_run.run_dir.id)}
    assert ("export:gguf", str(out.resolve())) in kinds


def test_force_replaces_a_previous_export_whole(full_run, tmp_path) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier export", encoding="utf-8")

    export_run(full_run.run_dir.id, "merged", out, full_run.config.registry_url, force=True)

    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["merged"], "the staging folder was left behind"


def _unknown_run(run: CompletedRun, tmp_path: pathlib.Path) -> list[str]:
    return ["no-such-run", "--format", "merged", "--out", str(tmp_path / "x")]


def _bad_format(run: CompletedRun, tmp_path: pathlib.Path) -> list[str]:
    return [run.run_dir.id, "--format", "onnx", "--out", str(tmp_path / "x")]


def _non_empty_out(run: CompletedRun, tmp_path: pathlib.Path) -> list[str]:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine", encoding="utf-8")
    return [run.run_dir.id, "--format", "merged", "--out", str(tmp_path / "x")]


def _adapter_of_full(run: CompletedRun, tmp_path: pathlib.Path) -> list[str]:
    return [run.run_dir.id, "--format", "adapter", "--out", str(tmp_path / "x")]


def _dtype_for_merged(run: CompletedRun, tmp_path: pathlib.Path) -> list[str]:
    return [run.run_dir.id, "--format", "merged", "--dtype", "f16", "--out", str(tmp_path / "x")]


MISTAKES = {
    "unknown-run": (_unknown_run, ("no-such-run",), RunNotFoundError.exit_code),
    "bad-format": (_bad_format, ("onnx", "merged, adapter, gguf"), ExportError.exit_code),
    "non-empty-out": (_non_empty_out, ("not empty", "--force"), ExportError.exit_code),
    "adapter-of-full-fine-tune": (_adapter_of_full, ("no adapter", "--format merged"), ExportError.exit_code),
    "dtype-for-merged": (_dtype_for_merged, ("--dtype", "gguf only"), ExportError.exit_code),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_mistake_is_one_error_line_and_writes_nothing(case, full_run, tmp_path, capsys) -> None:
    make, names, exit_code = MISTAKES[case]
    args = make(full_run, tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    artifacts = full_run.registry.get_artifacts(full_run.run_dir.id)

    code = main(["--quiet", "export", *args, "--registry", full_run.config.registry_url])

    out, err = capsys.readouterr()
    assert code == exit_code != 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0]
    assert out == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert full_run.registry.get_artifacts(full_run.run_dir.id) == artifacts


def _qwen2(model_dir: pathlib.Path) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )


def _llama3_rope(model_dir: pathlib.Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.rope_parameters = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    return model


@pytest.mark.parametrize(
    ("make", "names"), [(_qwen2, ("'qwen2'", "--format merged")), (_llama3_rope, ("llama3",))]
)
def test_gguf_refuses_what_it_cannot_write_faithfully(
    make, names, tiny_model_dir, tiny_tokenizer, tmp_path
) -> None:
    from specialize.deploy.llamacpp import write_gguf

    with pytest.raises(ExportError) as caught:
        write_gguf(make(tiny_model_dir), tiny_tokenizer, tmp_path / "m.gguf", "f16", "m")

    for name in names:
        assert name in str(caught.value)
    assert not (tmp_path / "m.gguf").exists()


def test_gguf_names_the_pre_tokenizer_as_llama_cpp_does(tiny_tokenizer) -> None:
    from tokenizers import pre_tokenizers

    from specialize.deploy.llamacpp import _pre_tokenizer

    def shape(pre: Any) -> Any:
        return json.loads(pre.__getstate__())

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert _pre_tokenizer(shape(byte_level)) == "gpt-2"
    digits = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    assert _pre_tokenizer(shape(digits)) == "smollm"  # SmolLM2's own tokenizer.json
    with pytest.raises(ExportError, match="pre-tokenizer"):
        _pre_tokenizer(shape(pre_tokenizers.Whitespace()))
