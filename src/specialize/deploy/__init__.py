"""Deployment: a finished run exported as a merged model, an adapter, or a llama.cpp GGUF file."""

from specialize.deploy.export import FORMATS, export_run

__all__ = ["FORMATS", "export_run"]
