"""The dashboard's router: sign-in, static files, and the pages of every page provider.

`ui_router` is mounted by `specialize serve` (and `specialize ui`) at `/ui`, in the same process and behind the
same API keys as the OpenAI API. Pages are rendered on the server with Jinja2 (autoescaped: every value a page
shows from a run is user data); `static/ui.js` adds the live curve, the playground and the new-run form, which
call the server's own `/v1` API from the browser. Everything the pages load comes from this package, so the
dashboard works offline; the Content-Security-Policy allows scripts and styles from the server only.

Pages come from page providers, modules listed in PROVIDERS, each with `pages(context)` (its navigation entries)
and `router(site)` (its routes, guarded by `site.page_session`; one that changes state, such as promoting an
alias, by `site.changing_session`, which also checks the CSRF token). A stage that adds pages (search studies,
monitoring) adds a provider module here; its `pages` returns no entry while the stage's package is absent, so the
navigation shows what is installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from specialize.ui.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Session,
    Sessions,
    csrf_ok,
    form_fields,
    safe_next,
)

if TYPE_CHECKING:
    from specialize.runs import Registry
    from specialize.serve.api_keys import ApiKeys

PROVIDERS = ("specialize.ui.run_pages", "specialize.ui.model_pages")
FORM = "application/x-www-form-urlencoded"
STATIC = {"ui.css": "text/css", "ui.js": "text/javascript"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class UiContext:
    """What the pages read and which parts of the server they may call."""

    registry: Registry
    keys: ApiKeys | None  # None: the server runs without keys (--no-auth), and so does the dashboard
    base_model: str  # the served base model's id, the left side of the playground
    fine_tuning: bool = True  # the server takes fine-tuning jobs (the new-run page needs them)
    # The fine-tuning jobs and the key owning each (job id -> key id). A job trains as a run named after it, and a
    # key sees only its own jobs' runs (an admin key every run), as the API shows it only its own jobs and models.
    job_owners: Callable[[], dict[str, str | None]] = field(default=dict)


@dataclass(frozen=True)
class NavEntry:
    path: str
    title: str


class Site:
    """What every page provider shares: the context, sessions, templates and the sign-in guards."""

    def __init__(self, context: UiContext) -> None:
        import jinja2

        from specialize.evaluate.report import system_name
        from specialize.ui.reading import flatten, prompt_text

        self.context = context
        self.sessions = Sessions(context.keys)
        self.providers = [importlib.import_module(name) for name in PROVIDERS]
        self.nav = [entry for p in self.providers for entry in p.pages(context)]
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("specialize.ui", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.do"],
        )
        self.env.globals.update(
            system_name=system_name,
            nav=self.nav,
            auth=self.sessions.auth,
            flatten=flatten,
            prompt_text=prompt_text,
        )
        self.env.filters.update(num=_num, quote=lambda s: quote(str(s), safe=""))

    def page_session(self, request: Request) -> Session:
        """Dependency of every page: the session, or a redirect to the sign-in page (and back afterwards)."""
        session = self.sessions.read(request)
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise HTTPException(303, headers={"Location": f"/ui/login?next={quote(target, safe='')}"})
        return session

    async def changing_session(self, request: Request) -> Session:
        """Dependency of every request that changes state (sign-out; a provider's promote or rollback): the
        session, with its CSRF token in the header X-CSRF-Token or the form field `csrf_token`; else 403."""
        session = self.page_session(request)
        token = request.headers.get(CSRF_HEADER)
        if token is None and request.headers.get("content-type", "").startswith(FORM):
            token = (await form_fields(request)).get(CSRF_FIELD)
        if not csrf_ok(session, token):
            raise HTTPException(403, "This request did not carry the page's CSRF token; nothing was changed.")
        return session

    def api_session(self, request: Request) -> Session:
        """Dependency of the dashboard's JSON endpoints: the session, or 401."""
        session = self.sessions.read(request)
        if session is None:
            raise HTTPException(401, "Sign in at /ui/login first.")
        return session

    def visible(self, session: Session) -> Callable[[dict[str, Any]], bool]:
        """Whether a run (its registry row) is shown to this session: runs of another key's jobs are not."""
        owners = self.context.job_owners()
        return lambda run: session.sees(owners.get(str(run.get("name"))))

    def run_row(self, session: Session, run_id: str) -> dict[str, Any]:
        """The registry row of a run this session may see.

        Raises:
            RunNotFoundError: no such run, or another key's: the same answer, as the API gives for its jobs.
        """
        from specialize.errors import RunNotFoundError

        row = self.context.registry.get_run(run_id)
        if not self.visible(session)(row):
            raise RunNotFoundError(f"no run {run_id!r} in the registry")
        return row

    def render(
        self,
        template: str,
        session: Session | None,
        active: str = "",
        status: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        page = self.env.get_template(template).render(
            session=session, csrf=session.csrf if session else "", active=active, **values
        )
        return HTMLResponse(page, status, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})

    def not_found(self, session: Session, message: str) -> HTMLResponse:
        return self.render("error.html", session, status=404, title="Not found", message=message)


def _num(value: Any, digits: int = 3) -> str:
    """A metric as the tables show it: 3 decimals, counts (integers) as integers, nothing for missing."""
    if value is None or isinstance(value, bool):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if digits == 0 else f"{value:.{digits}f}"
    return str(value)


def ui_router(context: UiContext) -> APIRouter:
    """The dashboard's routes under /ui, to include in the server's app."""
    site = Site(context)
    router = APIRouter(prefix="/ui", include_in_schema=False)

    @router.get("")
    @router.get("/")
    def index() -> Response:
        return RedirectResponse("/ui/runs", 303)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404)
        body = resources.files("specialize.ui").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @router.get("/login")
    def login_page(request: Request, next: str = "") -> Response:
        if site.sessions.read(request) is not None:
            return RedirectResponse(safe_next(next), 303)
        token = request.cookies.get(LOGIN_COOKIE) or _token()
        response = site.render(
            "login.html", None, title="Sign in", next=safe_next(next), login_token=token, error=""
        )
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/ui/login")
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        fields = await form_fields(request)
        token = request.cookies.get(LOGIN_COOKIE, "")
        if not token or not csrf_ok(Session(None, token, 0), fields.get(CSRF_FIELD)):
            return _refused(site, "The sign-in form has expired or was sent from another site; reload it.")
        cookie = site.sessions.sign_in(fields.get("key", "").strip())
        if cookie is None:
            return site.render(
                "login.html",
                None,
                status=401,
                title="Sign in",
                next=safe_next(fields.get("next")),
                login_token=token,
                error="That key is not an active API key of this server.",
            )
        response: Response = RedirectResponse(safe_next(fields.get("next")), 303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=site.sessions.lifetime_s,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/ui",  # the API authenticates by bearer key only: the cookie never goes to /v1
        )
        response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
        return response

    @router.post("/logout")
    async def logout(session: Session = Depends(site.changing_session)) -> Response:
        response = RedirectResponse("/ui/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response

    for provider in site.providers:
        router.include_router(provider.router(site))
    return router


def _token() -> str:
    import secrets

    return secrets.token_urlsafe(24)


def _refused(site: Site, message: str) -> HTMLResponse:
    return site.render("error.html", None, status=403, title="Refused", message=message)
