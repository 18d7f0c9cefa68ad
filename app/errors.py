"""Every error leaves as ``application/problem+json`` (RFC 9457) with ``type``, ``title``, ``status``,
``detail``."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.inference import BatcherClosed
from model_store.media import MediaError
from model_store.registry import RegistryError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "urn:avscene:problem:"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(
    status: int, detail: str, type_: str = "about:blank", title: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The problem document; ``type_`` is ``about:blank`` (title = the HTTP phrase) or an avscene URN."""
    body: dict[str, Any] = {
        "type": type_ if type_ == "about:blank" else PROBLEM_BASE + type_,
        "title": title or _title(status),
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return body


def problem_response(
    status: int,
    detail: str,
    type_: str = "about:blank",
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    body = problem(status, detail, type_, title, **extra)
    return ProblemResponse(body, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    # only location, message and type: `input` may hold the upload and `ctx` may hold exception objects
    errors = [
        {"loc": [str(part) for part in err.get("loc", ())], "msg": str(err.get("msg", "")),
         "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
    return problem_response(422, detail, "validation", "Request validation failed", errors=errors)


async def _media_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, MediaError)
    return problem_response(exc.status, exc.detail, "media", "The uploaded media cannot be used")


async def _registry_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RegistryError)
    log.error("model registry error: %s", exc)
    return problem_response(503, str(exc), "model-unavailable", "Model unavailable")


async def _batcher_closed(request: Request, exc: Exception) -> ProblemResponse:
    return problem_response(503, "the service is shutting down; retry", "unavailable", "Service Unavailable",
                            headers={"Retry-After": "1"})


async def _unhandled_error(request: Request, exc: Exception) -> ProblemResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "an internal error occurred; it has been logged", "internal",
                            "Internal Server Error")


class InternalErrorMiddleware:
    """Answers an exception no handler took with a 500 problem, and keeps the connection open.

    Starlette's outermost middleware answers such errors too, but re-raises them afterwards, and the server then
    closes the connection under the client's next request. Added innermost, this one answers first; an error
    after the answer has started still propagates (the connection cannot carry on then).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            response = await _unhandled_error(Request(scope), exc)
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(MediaError, _media_error)
    app.add_exception_handler(RegistryError, _registry_error)
    app.add_exception_handler(BatcherClosed, _batcher_closed)
    app.add_exception_handler(Exception, _unhandled_error)
