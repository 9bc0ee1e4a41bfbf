"""`specialize serve`: fine-tuned adapters and their base model behind an OpenAI-compatible API.

`server.py` builds the app from the command's options; `app.py` assembles it from the routers in `routes/` and
`fine_tuning/`, all behind the request gate (`gate.py`).
"""

from specialize.serve.server import ServeOptions, build_app, serve

__all__ = ["ServeOptions", "build_app", "serve"]
