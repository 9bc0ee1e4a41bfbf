"""Deployment: exports of a finished run (merged model, adapter, llama.cpp GGUF), and what `specialize serve`
runs on: the inference engine, the served models, API keys and the request log."""

from specialize.deploy.export import FORMATS, export_run

__all__ = ["FORMATS", "export_run"]
