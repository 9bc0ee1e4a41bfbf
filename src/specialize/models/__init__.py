"""Model selection: the catalogue, the local model cache, and loading a base model for a stage (`loading.py`)."""

from specialize.models.catalog import CATALOG, CatalogEntry
from specialize.models.loading import (
    ModelInfo,
    cache_dir,
    check_model,
    for_inference,
    list_models,
    load_model,
    pull_model,
    resolve_model,
)

__all__ = [
    "CATALOG",
    "CatalogEntry",
    "ModelInfo",
    "cache_dir",
    "check_model",
    "for_inference",
    "list_models",
    "load_model",
    "pull_model",
    "resolve_model",
]
