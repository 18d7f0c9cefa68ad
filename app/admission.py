"""Admission control: work is taken up to configured bounds, beyond them the answer is an immediate 503.

Three bounds, all settings (``app/settings.py``):

- **per model**, the windows admitted (decoding, queued for or in inference) and the requests holding them:
  :class:`ModelBudget`. A request's windows are counted from the probe (headers only) before anything is decoded;
  a request larger than the whole budget is admitted only when the model holds nothing else, so any video up to
  ``max_duration_s`` can be served, alone.
- **upload bytes held** by requests in flight: :class:`ByteBudget`, reserved from ``Content-Length`` before the
  body is read (or counted as a chunked body arrives).
- **time**: a per-request deadline; work that can no longer be answered in time is stopped.

Every analysis request runs with a :class:`Work` (a context variable, so worker threads see it too): decoding
polls :meth:`Work.should_stop`, and :class:`AdmissionMiddleware` cancels the request when its deadline passes or its
client disconnects. A refusal is ``503`` problem+json with ``Retry-After`` (seconds), from :class:`Refused`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PROBLEM_JSON, problem, problem_response
from app.limits import declared_length

log = logging.getLogger(__name__)


class Refused(Exception):
    """Over a bound: answered 503 with ``Retry-After``."""

    def __init__(self, detail: str, retry_after_s: float, type_: str = "overloaded") -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = max(1, min(3600, math.ceil(retry_after_s)))
        self.type = type_

    def body(self) -> bytes:
        return json.dumps(problem(503, self.detail, self.type, "Service Unavailable",
                                  retry_after_s=self.retry_after)).encode()

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Stopped(Exception):
    """The work was stopped (deadline passed, client gone, job cancelled); ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Work:
    """One request's (or job's) right to keep working: a deadline, a cancel flag, the admissions it holds."""

    deadline: float | None = None  # time.monotonic() after which it stops
    deadline_s: float | None = None
    reason: str | None = None  # set once cancelled
    tickets: list[Ticket] = field(default_factory=list)
    on_progress: Callable[[float], None] | None = None

    def cancel(self, reason: str) -> None:
        self.reason = self.reason or reason

    def should_stop(self) -> bool:
        """True once cancelled or past the deadline; cheap enough to poll per decoded packet (any thread)."""
        if self.reason is None and self.deadline is not None and time.monotonic() > self.deadline:
            self.reason = f"the request ran past its deadline of {self.deadline_s:g} s"
        return self.reason is not None

    def check(self) -> None:
        if self.should_stop():
            raise Stopped(self.reason or "stopped")

    def progress(self, fraction: float) -> None:
        if self.on_progress is not None:
            self.on_progress(fraction)

    def release(self) -> None:
        while self.tickets:
            self.tickets.pop().release()


current_work: contextvars.ContextVar[Work | None] = contextvars.ContextVar("avscene_work", default=None)


def work() -> Work | None:
    """The :class:`Work` of the request or job running in this context (None outside one)."""
    return current_work.get()


@dataclass
class Ticket:
    budget: ModelBudget
    windows: int
    admitted_at: float
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget._release(self)


class ModelBudget:
    """Windows and requests admitted for one model: at most ``max_windows`` windows (unless a single request holds
    the model alone) and ``max_requests`` requests. :meth:`admit` refuses at once; :meth:`wait_admit` (jobs)
    waits for room instead."""

    def __init__(self, name: str, max_windows: int, max_requests: int) -> None:
        self.name = name
        self.max_windows = max_windows
        self.max_requests = max_requests
        self.windows = 0
        self.requests = 0
        self.refused = 0
        self.admitted = 0
        self.service_s = 1.0  # moving average of how long an admitted request holds its windows
        self._room = asyncio.Condition()

    def _fits(self, windows: int) -> bool:
        if self.requests == 0:
            return True  # an idle model takes any one request, however large
        return self.requests < self.max_requests and self.windows + windows <= self.max_windows

    def retry_after_s(self) -> float:
        """A guess at when room frees up: the average hold time, scaled by how full the model is."""
        share = max(self.windows / max(self.max_windows, 1), self.requests / max(self.max_requests, 1))
        return self.service_s * min(1.0, share)

    def full(self) -> Refused | None:
        """A refusal if the model takes no more requests, whatever their size (checked before reading an upload)."""
        if self.requests < self.max_requests:
            return None
        self.refused += 1
        return Refused(f"the {self.name} model is busy: {self.requests} requests hold {self.windows} windows (at most "
                       f"{self.max_requests} requests); retry later, or send it as a job (Prefer: respond-async)",
                       self.retry_after_s())

    def admit(self, windows: int) -> Ticket:
        if not self._fits(windows):
            self.refused += 1
            raise Refused(
                f"the {self.name} model is busy: {self.requests} requests hold {self.windows} windows "
                f"(at most {self.max_requests} requests, {self.max_windows} windows); this video needs {windows}; "
                "retry later, or send it as a job (Prefer: respond-async)", self.retry_after_s())
        return self._take(windows)

    async def wait_admit(self, windows: int) -> Ticket:
        async with self._room:
            await self._room.wait_for(lambda: self._fits(windows))
            return self._take(windows)

    def _take(self, windows: int) -> Ticket:
        self.windows += windows
        self.requests += 1
        self.admitted += 1
        ticket = Ticket(self, windows, time.monotonic())
        if (w := work()) is not None:
            w.tickets.append(ticket)
        return ticket

    def _release(self, ticket: Ticket) -> None:
        self.windows -= ticket.windows
        self.requests -= 1
        held = time.monotonic() - ticket.admitted_at
        self.service_s = 0.8 * self.service_s + 0.2 * held

        async def notify() -> None:
            async with self._room:
                self._room.notify_all()

        try:
            asyncio.get_running_loop().create_task(notify())
        except RuntimeError:  # no loop (shutting down)
            pass


class ByteBudget:
    """Bytes of request bodies held by requests in flight (in memory up to 1 MiB each, the rest spooled to disk)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0
        self.refused = 0

    def reserve(self, n: int) -> bool:
        if n > 0 and self.held + n > self.max_bytes:
            self.refused += 1
            return False
        self.held += n
        return True

    def release(self, n: int) -> None:
        self.held -= n


def past_deadline(work_: Work, retry_after_s: float) -> Refused:
    return Refused(f"the request did not finish within its deadline of {work_.deadline_s:g} s "
                   "(AVSCENE_REQUEST_DEADLINE_S); send long videos as jobs (Prefer: respond-async)", retry_after_s,
                   "deadline")


class AdmissionMiddleware:
    """For the analysis routes (``POST`` under ``paths``): the upload-bytes bound, the per-request deadline, and
    stopping the work when the client disconnects.

    The body's bytes are reserved from ``Content-Length`` before it is read (503 at once if they do not fit) or as
    a chunked body arrives. Once the body is in, a watcher waits for the client to go away; then the request is
    cancelled (its decode stops at the next packet, its windows leave the batcher's queue). At the deadline the
    request is cancelled too and answered 503, unless its answer has started. (:class:`Refused` and
    :class:`Stopped` raised in the app are answered by the exception handlers of :func:`install`.)
    """

    def __init__(self, app: ASGIApp, bytes_budget: ByteBudget, deadline_s: float | None,
                 paths: tuple[str, ...] = ("/v1/actions", "/v1/localization", "/v1/separations", "/v1/analyze"),
                 retry_after_s: Callable[[], float] = lambda: 1.0,
                 stopped: dict[str, int] | None = None,
                 precheck: Callable[[str], Refused | None] = lambda path: None) -> None:
        self.app = app
        self.stopped = stopped if stopped is not None else {}
        self.bytes = bytes_budget
        self.deadline_s = deadline_s
        self.paths = paths
        self.retry_after_s = retry_after_s
        self.precheck = precheck

    def _guarded(self, scope: Scope) -> bool:
        return scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/") in self.paths

    async def _refuse(self, send: Send, refused: Refused) -> None:
        body = refused.body()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(refused.retry_after).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._guarded(scope):
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        refused = self.precheck(scope["path"].rstrip("/"))
        if refused is not None:  # the model takes no more requests now: refuse before reading the upload
            await self._refuse(send, refused)
            return
        reserved = 0
        if declared > 0:
            if not self.bytes.reserve(declared):
                log.info("refused a %d-byte upload: %d of %d bytes held", declared, self.bytes.held,
                         self.bytes.max_bytes)
                await self._refuse(send, Refused(
                    f"the service holds {self.bytes.held} bytes of uploads (at most {self.bytes.max_bytes}); "
                    f"this one has {declared}; retry later", self.retry_after_s(), "uploads-full"))
                return
            reserved = declared

        work_ = Work()
        if self.deadline_s:
            work_.deadline, work_.deadline_s = time.monotonic() + self.deadline_s, self.deadline_s
        token = current_work.set(work_)
        body_done = anyio.Event()
        state = {"started": False, "finished": False, "counted": 0}

        async def guarded_receive() -> Message:
            nonlocal reserved
            message = await receive()
            if message["type"] == "http.request":
                state["counted"] += len(message.get("body", b""))
                if declared < 0 and state["counted"] > reserved:  # chunked: reserve as it arrives
                    more = state["counted"] - reserved
                    if not self.bytes.reserve(more):
                        raise Refused(f"the service holds {self.bytes.held} bytes of uploads (at most "
                                      f"{self.bytes.max_bytes}); retry later", self.retry_after_s(), "uploads-full")
                    reserved += more
                if not message.get("more_body", False):
                    body_done.set()
            elif message["type"] == "http.disconnect":
                work_.cancel("the client disconnected")
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                # the work is done once its answer exists: give its windows back before the client, answered,
                # can send its next request
                work_.release()
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["finished"] = True
            if work_.reason == "the client disconnected":
                return  # nobody to send it to
            await send(message)

        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    await body_done.wait()
                    message = await receive()  # only the client going away (or the answer ending) wakes this
                    if message["type"] == "http.disconnect" and not state["finished"]:
                        work_.cancel("the client disconnected")
                        log.info("%s: the client disconnected; its work is stopped", scope["path"])
                        tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                with anyio.move_on_after(self.deadline_s or math.inf) as deadline:
                    await self.app(scope, guarded_receive, tracking_send)
                if deadline.cancelled_caught:
                    work_.cancel(f"the request ran past its deadline of {self.deadline_s:g} s")
                    log.info("%s: past its deadline of %g s; stopped", scope["path"], self.deadline_s)
                    if not state["started"]:
                        await self._refuse(send, past_deadline(work_, self.retry_after_s()))
                tg.cancel_scope.cancel()
        finally:
            if work_.reason is not None:
                kind = "disconnect" if "disconnected" in work_.reason else "deadline"
                self.stopped[kind] = self.stopped.get(kind, 0) + 1
            work_.release()
            self.bytes.release(reserved)
            current_work.reset(token)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return problem_response(503, exc.detail, exc.type, "Service Unavailable", headers=exc.headers(),
                            retry_after_s=exc.retry_after)


async def _stopped(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Stopped)
    w = work()
    refused = past_deadline(w, 1.0) if w is not None and w.deadline_s and "deadline" in exc.reason else Refused(
        f"the work was stopped: {exc.reason}", 1.0, "stopped")
    return await _refused(request, refused)


def install(app: FastAPI, bytes_budget: ByteBudget, deadline_s: float | None, retry_after_s: Callable[[], float],
            stopped: dict[str, int], precheck: Callable[[str], Refused | None]) -> None:
    """Admission's middleware (upload bytes, deadline, disconnects) and its 503 answers. The service state passes
    its budgets and hooks in (admission sits below the service and never imports it)."""
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(Stopped, _stopped)
    app.add_middleware(AdmissionMiddleware, bytes_budget=bytes_budget, deadline_s=deadline_s,
                       retry_after_s=retry_after_s, stopped=stopped, precheck=precheck)
