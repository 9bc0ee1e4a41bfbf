"""Deployment: exports of a finished run (merged model, PEFT adapter, llama.cpp GGUF) for other servers."""

from specialize.deploy.export import FORMATS, export_run

__all__ = ["FORMATS", "export_run"]
