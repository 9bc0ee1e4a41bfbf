"""Pages that use the served models through the server's own OpenAI API: the playground and the new-run form.

The server renders the page; `static/ui.js` does the work in the browser with the signed-in key, exactly as any
client would: `/v1/models` and `/v1/chat/completions` for the playground, `/v1/files` and `/v1/fine_tuning/jobs`
for a new run, then the run's live curve once the job's run exists.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from specialize.ui.app import NavEntry, Site, UiContext
from specialize.ui.auth import Session


def pages(context: UiContext) -> list[NavEntry]:
    entries = [NavEntry("/ui/playground", "Playground")]
    if context.fine_tuning:
        entries.append(NavEntry("/ui/new", "New run"))
    return entries


def router(site: Site) -> APIRouter:
    r = APIRouter()

    @r.get("/playground")
    def playground(
        left: str = "", right: str = "", session: Session = Depends(site.page_session)
    ) -> Response:
        visible = site.visible(session)
        finished = [
            run["id"]
            for run in site.context.registry.list_runs()
            if run.get("status") == "completed" and visible(run)
        ]
        return site.render(
            "playground.html",
            session,
            active="/ui/playground",
            title="Playground",
            left=left or site.context.base_model,
            right=right or (finished[-1] if finished else site.context.base_model),
        )

    if site.context.fine_tuning:

        @r.get("/new")
        def new_run(session: Session = Depends(site.page_session)) -> Response:
            return site.render(
                "new_run.html", session, active="/ui/new", title="New run", base_model=site.context.base_model
            )

    return r
