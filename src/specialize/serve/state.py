"""What the routes of one server share, kept on its app (`app.state.server`) so that routers stay module-level."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from specialize.errors import NotFoundError
from specialize.models.engine import Engine
from specialize.serve.gate import ApiError, Gate
from specialize.serve.served_models import ServedModel, ServedModels


@dataclass(frozen=True)
class Server:
    """The engine that answers, the models it answers for, and the gate every request passes."""

    engine: Engine
    models: ServedModels
    gate: Gate

    def lookup(self, model_id: str, request: Request) -> ServedModel:
        """The served model `model_id` as the request's key may see it, or a 404 naming the `model` field."""
        try:
            model = self.models.get(model_id, request.state.served.key_id, request.state.admin)
        except NotFoundError as exc:
            raise ApiError(404, str(exc), "model_not_found", "model") from None
        # the run that answers, logged: `NAME@alias` names another run once the alias moves
        request.state.served.run_id = model.adapter.id if model.adapter is not None else None
        return model


def server_of(request: Request) -> Server:
    server: Server = request.app.state.server
    return server
