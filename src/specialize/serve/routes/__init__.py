"""The routers of the OpenAI-compatible API, one module per endpoint family; `generation.py` is what chat and
completions share."""
