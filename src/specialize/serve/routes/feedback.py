"""`POST /v1/feedback`: what a user thought of an answer (a rating, a correction), kept with its request for
monitoring and re-fine-tuning."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from specialize.errors import NotFoundError
from specialize.serve.gate import ApiError, GatedRoute, gate_of
from specialize.serve.schemas import FeedbackRequest

router = APIRouter(route_class=GatedRoute)


@router.post("/v1/feedback", name="feedback")
async def feedback(request: Request) -> Response:
    gate = gate_of(request)
    body: FeedbackRequest = await gate.parse(request, FeedbackRequest)
    if not body.has_content():
        raise ApiError(400, "Give a rating, a correction, or both.", "invalid_request", "rating")
    try:
        feedback_id = await asyncio.to_thread(
            gate.request_log.add_feedback,
            body.request_id,
            request.state.served.key_id,
            body.rating,
            body.correction,
            body.comment,
        )
    except NotFoundError as exc:
        raise ApiError(404, str(exc), "request_not_found", "request_id") from None
    return JSONResponse({"id": feedback_id, "object": "feedback", "request_id": body.request_id})
