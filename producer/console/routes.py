"""The operator's console under /console: overview, jobs, a job, failed jobs with retry and cancel.

Everything is read and changed through the tenant-scoped Client of the logged-in key. Pages are
Jinja2 templates with autoescaping (job inputs are untrusted text); every change is a POST carrying
the session's CSRF token; no key or URL with credentials is ever rendered.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from db.models import JobStatus, utcnow
from producer.console.https import CookiePolicy
from producer.console.session import COOKIE, Session, Signer
from producer.errors import InvalidJobError, JobNotFoundError, JobNotRetryableError
from producer.operations import parse_age
from producer.overview import SERIES_MINUTES
from producer.tenants import ApiKey, Scope

if TYPE_CHECKING:
    from producer.client import Client
    from producer.gateway_auth import KeyRing

HERE = Path(__file__).resolve().parent
PREFIX = "/console"
PAGE_SIZE = 50

_templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def include_console(app: FastAPI, *, cookies: CookiePolicy | None = None) -> None:
    """Serve the console under /console (the app's `state.keys` is its KeyRing); `cookies` says when
    the session cookie is `Secure` (default: when the request came over https)."""
    policy = cookies or CookiePolicy()
    signer = Signer()
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")

    def keyring(request: Request) -> KeyRing:
        keys: KeyRing = request.app.state.keys
        return keys

    def current(request: Request, scope: Scope = Scope.READ) -> tuple[Session, ApiKey, Client]:
        session = signer.read(request.cookies.get(COOKIE))
        key = None if session is None else next(
            (k for k in keyring(request).known_keys() if signer.fingerprint(k) == session.fingerprint), None)
        if session is None or key is None:
            raise _Refused(RedirectResponse(f"{PREFIX}/login", status_code=303))
        if not key.allows(scope):
            raise _Refused(_page("error.html", None, status=403, message=f"this API key lacks the {scope.value!r} scope"))
        return session, key, keyring(request).client_of(key)

    async def posted(request: Request, scope: Scope) -> tuple[Client, dict[str, Any]]:
        session, _, client = current(request, scope)
        form = await request.form()
        if not signer.csrf_ok(session, _text(form.get("csrf"))):
            raise _Refused(_page("error.html", None, status=403, message="missing or wrong CSRF token: reload the page"))
        return client, {k: form.getlist(k) if k == "ids" else _text(form.get(k)) for k in form}

    async def blocking(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    @router.get("/login")
    def login_page(request: Request) -> Response:
        return _page("login.html", None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        key = keyring(request).key_of(_text(form.get("api_key")) or "")
        if key is None:
            return _page("login.html", None, status=401, message="unknown API key")
        value, _ = signer.issue(key)
        response = RedirectResponse(f"{PREFIX}/", status_code=303)
        response.set_cookie(COOKIE, value, max_age=signer.lifetime_s, httponly=True, samesite="strict",
                            secure=policy.secure_for(request), path=PREFIX)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        await posted(request, Scope.READ)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX, secure=policy.secure_for(request), httponly=True, samesite="strict")
        return response

    @router.get("/")
    async def overview(request: Request) -> Response:
        session, key, client = current(request)
        view = await blocking(client.overview)
        workers = await blocking(client.workers)
        return _page("overview.html", session, overview=view, workers=workers, tenant=key.tenant,
                     series_minutes=SERIES_MINUTES)

    @router.get("/overview.json")
    async def overview_json(request: Request) -> Response:
        _, _, client = current(request)
        view = await blocking(client.overview)
        return JSONResponse(view.model_dump(mode="json"))

    @router.get("/fragments/models")
    async def models_fragment(request: Request) -> Response:
        session, _, client = current(request)
        return _page("models_table.html", session, overview=await blocking(client.overview))

    @router.get("/jobs")
    async def jobs(request: Request) -> Response:
        session, _, client = current(request)
        q = request.query_params
        filters = {name: q.get(name) or None for name in ("status", "model", "text", "error_type", "since", "cursor")}
        try:
            since = utcnow() - parse_age(filters["since"]) if filters["since"] else None
        except ValueError as exc:
            return _page("jobs.html", session, status=422, filters=filters, page=None, message=f"since: {exc}")
        try:
            page = await blocking(client.list_jobs, status=filters["status"], model=filters["model"],
                                  error_type=filters["error_type"], text_contains=filters["text"], since=since,
                                  cursor=filters["cursor"], limit=PAGE_SIZE)
        except InvalidJobError as exc:
            return _page("jobs.html", session, status=422, filters=filters, page=None, message=str(exc))
        return _page("jobs.html", session, filters=filters, page=page, statuses=list(JobStatus),
                     search_window=client.search_window)

    @router.get("/jobs/{job_id}")
    async def job(request: Request, job_id: str) -> Response:
        session, _, client = current(request)
        try:
            view = await blocking(client.get, job_id)
        except JobNotFoundError as exc:
            return _page("error.html", session, status=404, message=str(exc))
        return _page("job.html", session, job=view)

    @router.get("/failed")
    async def failed(request: Request) -> Response:
        session, _, client = current(request)
        groups = await blocking(client.failure_groups)
        page = await blocking(client.list_jobs, status="failed", limit=PAGE_SIZE)
        return _page("failed.html", session, groups=groups, page=page, message=request.query_params.get("done"))

    @router.post("/jobs/{job_id}/retry")
    async def retry_one(request: Request, job_id: str) -> Response:
        client, _ = await posted(request, Scope.CANCEL)
        try:
            await blocking(client.retry, job_id)
        except (JobNotFoundError, JobNotRetryableError) as exc:
            return _page("error.html", None, status=404 if isinstance(exc, JobNotFoundError) else 409, message=str(exc))
        return RedirectResponse(f"{PREFIX}/jobs/{uuid.UUID(job_id)}", status_code=303)

    @router.post("/jobs/{job_id}/cancel")
    async def cancel_one(request: Request, job_id: str) -> Response:
        client, _ = await posted(request, Scope.CANCEL)
        try:
            view = await blocking(client.cancel, job_id)
        except JobNotFoundError as exc:
            return _page("error.html", None, status=404, message=str(exc))
        return RedirectResponse(f"{PREFIX}/jobs/{view.id}", status_code=303)

    @router.post("/retry")
    async def retry_bulk(request: Request) -> Response:
        client, form = await posted(request, Scope.CANCEL)
        try:
            if form.get("ids"):
                done = f"retried {await blocking(client.retry_many, form['ids'])} selected jobs"
            else:
                since = utcnow() - parse_age(form["since"]) if form.get("since") else None
                count = await blocking(client.retry_matching, model=form.get("model") or None,
                                       error_type=form.get("error_type") or None, since=since,
                                       dry_run=form.get("dry_run") == "1")
                done = count.describe()
        except (ValueError, JobNotFoundError) as exc:
            return _page("error.html", None, status=422, message=str(exc))
        return RedirectResponse(f"{PREFIX}/failed?done={done}", status_code=303)

    @app.exception_handler(_Refused)
    async def refused(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refused)
        return exc.response

    app.include_router(router)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _page(template: str, session: Session | None, *, status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates.get_template(template).render(csrf=session.csrf if session else "", prefix=PREFIX,
                                                    timedelta=timedelta, **context)
    response = HTMLResponse(html, status_code=status)
    response.headers["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


__all__ = ["PREFIX", "include_console"]
