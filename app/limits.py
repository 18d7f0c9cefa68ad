"""A pure ASGI middleware that refuses request bodies over a byte limit with 413 problem+json."""

from __future__ import annotations

import json
import logging

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PROBLEM_JSON, problem

log = logging.getLogger(__name__)


def declared_length(scope: Scope) -> int:
    """The request's Content-Length, or -1 when it has none or a malformed one."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class UploadLimitMiddleware:
    """Answers 413 when ``Content-Length`` exceeds ``max_bytes`` before reading anything; for chunked or
    unknown-length bodies it counts bytes as they arrive and answers 413 as soon as the count passes the
    limit (whatever the app was doing with the body is abandoned)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(problem(413, f"the request body exceeds the limit of {self.max_bytes} bytes",
                                  "payload-too-large", "Payload Too Large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", PROBLEM_JSON.encode()),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared > self.max_bytes:
            log.info("refused a %d-byte body on %s", declared, scope.get("path"))
            await self._refuse(send)
            return

        received = 0
        exceeded = False
        started = False
        swallowing = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, swallowing
            if message["type"] == "http.response.start":
                # whatever the app made of the abandoned body (its own 413, a 400, ...), the answer is ours
                if exceeded:
                    swallowing = True
                    started = True
                    await self._refuse(send)
                    return
                started = True
            elif swallowing:
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send)
