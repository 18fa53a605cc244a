"""One request's owner, from arrival to its last byte.

`Exchange` is an async context manager. While it is open, the request holds the runtime it started
with (a reload cannot close it meanwhile), a watcher that cancels the work if the client hangs up,
and, once a backend answered, that answer's GPU-meter slot and upstream stream. On exit it gives all
of them back, answers an error in the client's dialect if anything failed before the response began,
and records the outcome exactly once, streamed or whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from types import TracebackType
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from classifier import Features, extract_features
from classifier.features import estimate_tokens
from gateway.accounting import BackendMeter, cost_usd
from gateway.config import Target
from gateway.errors import ClientGone, error_response
from gateway.inbound import read_json
from gateway.limits import Ticket, limited
from gateway.logs import RequestLine, log_request, requests_log
from gateway.policy import reachable
from gateway.principal import Principal
from gateway.recorder import Outcome
from gateway.relay import Tally
from gateway.request_id import REQUEST_ID_HEADER, request_id
from gateway.request_log import Row
from gateway.resilience import Answer, Plan, answer
from gateway.routing import Decision
from gateway.runtime import Resolved, Runtime
from gateway.shadow import Job, Sampled
from gateway.shared_meter import Slot
from gateway.state import GatewayState
from gateway.tracing import RequestSpan
from providers.base import Completion, Dialect, Usage

# The watcher is armed only once a request has taken this long after its body was read, so the common
# fast request pays a timer, not a task (a task per request cost ~40% of one worker's throughput).
WATCH_AFTER_SECONDS = 0.25
NO_ROUTE = ("none", "none", "none")  # labels of a request refused before routing (bad body, no model)
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies such as nginx must not buffer the stream
]


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


class Exchange:
    runtime: Runtime

    def __init__(
        self,
        state: GatewayState,
        scope: Scope,
        receive: Receive,
        send: Send,
        dialect: Dialect,
        *,
        record: bool = True,  # False for requests that only ask (token counting)
        features: Callable[[dict[str, Any]], Features] = extract_features,  # how its door measures a body
    ) -> None:
        self.state = state
        self.request = Request(scope, receive)
        self.dialect = dialect
        self.record = record
        self.started = time.perf_counter()
        self.body: dict[str, Any] = {}
        self.stream = False  # the client asked for a streamed answer
        self.api_key: str | None = None  # the gateway key the client authenticated with
        self.principal: Principal | None = None  # who that key is (gateway/principal.py)
        self.decision: Decision | None = None
        self.tried: Target | None = None  # the target called last
        self.resolved: Resolved | None = None  # who answered
        self.tally = Tally()
        self.sampled: Sampled | None = None  # picked for shadow judging (gateway/shadow.py)
        self.request_id = ""
        self.span: RequestSpan | None = None  # when tracing is on
        self.ticket: Ticket | None = None  # counted against its key's and team's limits
        self._measure = features
        self._features: Features | None = None
        self._receive = receive
        self._send = send
        self._headers_in: dict[str, str] | None = None
        self._answer: Answer | None = None  # held: its meter slot is taken, its stream open
        self._responded = False  # response headers sent
        self._delivered = False  # the whole response sent
        self._gone = False  # the client hung up
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Future[Message] | None = None

    @property
    def headers_in(self) -> dict[str, str]:
        """The request's headers by lower-case name (the first of repeated ones), decoded once: a dict
        lookup per header instead of Starlette's scan of the list on every `headers.get`."""
        if self._headers_in is None:
            raw = self.request.scope["headers"]
            self._headers_in = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(raw)}
        return self._headers_in

    async def __aenter__(self) -> Exchange:
        self.runtime = self.state.acquire()
        self._task = asyncio.current_task()
        self.request_id = request_id(self.headers_in)
        tracing = self.state.tracing
        if tracing is not None:
            self.span = tracing.request(self.request.scope["path"], self.headers_in, self.request_id)
        return self

    async def read_json(self) -> dict[str, Any]:
        """The body; from here on, what the connection says next can only be a disconnect."""
        limit = self.runtime.settings.max_body_bytes
        self.body = await read_json(self._receive, self.request.scope, self.headers_in, limit)
        self.stream = self.body.get("stream") is True
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_SECONDS, self._arm)
        return self.body

    def _arm(self) -> None:
        # The receive itself is the task (no wrapper coroutine): after the body, it can only be a disconnect.
        self._watcher = asyncio.ensure_future(self._receive())
        self._watcher.add_done_callback(self._heard)

    def _heard(self, receiving: asyncio.Future[Message]) -> None:
        if receiving.cancelled() or receiving.exception() is not None:
            return
        if receiving.result()["type"] != "http.disconnect":
            self._arm()
        elif not self._delivered and self._task is not None:  # servers also report it after a response
            self._gone = True
            self._task.cancel()

    def authenticated(self, api_key: str | None, principal: Principal | None = None) -> str | None:
        self.api_key, self.principal = api_key, principal
        return api_key

    @property
    def scope(self) -> frozenset[str] | None:
        """The backends this request may reach (its key's scope and data policy); None: any."""
        principal = self.principal
        return None if principal is None else reachable(principal, self.runtime.local_backends)

    def decided(self, decision: Decision, shadowed: bool = True) -> Decision:
        self.decision = decision
        if decision.routed and self.record and shadowed:
            router = self.runtime.settings.routers[self.body["model"]]
            if router.shadow is not None:
                scope = self.scope
                self.sampled = self.state.shadows.sample(
                    self.runtime, router, decision, self.body, self.api_key, scope
                )
                if self.sampled is None and self.principal is not None and self.principal.local_only:
                    self.state.recorder.policy_enforced("local_only", "shadow")  # never sampled
        return decision

    async def admit(self) -> None:
        """Count the decided request against its key's and team's rate limits and budgets, or refuse
        it (429); settled with what it really used when the exchange ends."""
        principal = self.principal
        if not limited(principal):
            return
        assert principal is not None and self.decision is not None
        decision, runtime = self.decision, self.runtime
        self.ticket = await self.state.limiter.admit(
            principal, runtime.settings.limits, self.measured, runtime.price(decision.target), self.dialect
        )

    def measured(self) -> Features:
        """The body as its door measures it: routing's features when it scored the body, else measured
        here once (a concrete model, embeddings)."""
        if self._features is None:
            decided = self.decision.features if self.decision is not None else None
            self._features = decided or self._measure(self.body)
        return self._features

    async def call(self, plan: Plan) -> Answer:
        """Ask the plan's targets; the answer is held here until the exchange ends."""
        plan.sent = {REQUEST_ID_HEADER: self.request_id}
        plan.span = self.span
        held = await answer(self.runtime, self.state, plan, self._trying)
        self._answer, self.resolved = held, held.resolved
        self.tally.upstream_seconds = held.upstream_seconds
        if held.fell_back_from is not None and self.decision is not None:
            self.decision = self.decision.answered_by_fallback()
        return held

    def _trying(self, target: Target) -> None:
        self.tried = target

    def headers(self, explained: str | None) -> dict[str, str]:
        """What the response says of its route, for a request a backend answered."""
        decision, resolved, answer = self.decision, self.resolved, self._answer
        assert decision is not None and resolved is not None and answer is not None
        overhead = self._overhead(time.perf_counter() - self.started)
        headers = {
            "x-crossover-route": decision.route,
            "x-crossover-backend": resolved.backend.name,
            "x-crossover-model": resolved.model.name,
            "x-crossover-overhead-ms": f"{overhead * 1000:.3f}",
            REQUEST_ID_HEADER: self.request_id,
        }
        if decision.score is not None:
            headers["x-crossover-score"] = f"{decision.score:.4f}"
        if decision.threshold is not None:
            headers["x-crossover-threshold"] = f"{decision.threshold:.4f}"
        if decision.rule is not None:
            headers["x-crossover-rule"] = decision.rule
        if explained is not None:
            headers["x-crossover-explain"] = explained
        if answer.fell_back_from is not None:
            headers["x-crossover-fallback-from"] = answer.fell_back_from
        if self.ticket is not None:
            headers.update(self.ticket.headers)
        return headers

    def _overhead(self, seconds: float) -> float:
        """Of `seconds` since arrival, the gateway's own: not waiting on backends."""
        own = seconds - self.tally.upstream_seconds
        return 0.0 if own < 0.0 else own  # max(own, 0.0) without the builtin's call (~0.1 µs)

    async def respond(self, content: bytes, headers: dict[str, str], usage: Usage | None = None) -> None:
        self.tally.usage = usage
        if self.sampled is not None:
            self.sampled.keep(content)
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            *_raw(headers),
        ]
        self._responded = True
        await self._send({"type": "http.response.start", "status": 200, "headers": raw})
        await self._send({"type": "http.response.body", "body": content})
        self._delivered = True

    async def respond_stream(self, body: AsyncGenerator[bytes, None], headers: dict[str, str]) -> None:
        if self.sampled is not None:
            body = self.sampled.tee(body)
        async with aclosing(body) as chunks:
            self._responded = True
            await self._send(
                {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + _raw(headers)}
            )
            async for chunk in chunks:
                await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            self._delivered = True

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        failure: Exception | None = exc if isinstance(exc, Exception) else None
        ours = exc is None or failure is not None
        if isinstance(exc, asyncio.CancelledError) and self._gone:
            assert self._task is not None
            self._task.uncancel()  # our own cancellation, for a client that left: handled here
            failure, ours = ClientGone("the client closed the connection before the answer"), True
        elif isinstance(exc, OSError) and self._responded:
            failure = ClientGone("the client went away while the answer was being written")
        refusal = None  # the error response, for a failure before the response began
        if failure is not None and ours and not self._responded and not isinstance(failure, ClientGone):
            refusal = error_response(failure, self.dialect)
        try:
            gpu_usd = await self._let_go()
            cost, usage = gpu_usd, self.tally.usage
            if self.record and ours:
                cost, usage = self._account(failure, refusal, gpu_usd)
            if ours:
                self._report(failure, refusal, cost, usage)
            if self.ticket is not None:
                self._settle(gpu_usd)
            if refusal is not None:
                await self._refuse(refusal)
        finally:
            if self.sampled is not None and failure is None:
                self._shadow()
            self.state.release(self.runtime)
        return ours

    def _shadow(self) -> None:
        """The client has its whole answer: judge it in the background (gateway/shadow.py)."""
        sampled, decision, resolved = self.sampled, self.decision, self.resolved
        assert sampled is not None
        if not self._delivered or self.tally.failed is not None or decision is None or resolved is None:
            return
        if decision.route != sampled.shadow.route:  # the other target answered it (fallback)
            return
        job = Job(
            router=sampled.router,
            shadow=sampled.shadow,
            runtime=self.runtime,
            dialect=self.dialect,
            path=self.request.scope["path"].removeprefix("/v1"),
            body=self.body,
            decision=decision,
            sent=bytes(sampled.answer),
            streamed=self.stream,
            model=resolved.model,
            usage=self.tally.usage,
        )
        self.state.shadows.start(job)

    async def _let_go(self) -> float:
        """Close the upstream stream and free the meter slot; the GPU cost share of the answer."""
        held = self._answer
        if held is None:
            return 0.0
        self._answer = None
        # The meter first: a cancellation landing in aclose() must not leak the slot (spill-over reads it).
        mark, gpu_usd, counted_out = held.gpu_mark, 0.0, None
        if isinstance(mark, Slot):  # shared through Redis: the cost comes with the report of its end
            counted_out = mark.stop()
        else:
            meter = self.state.meters.get(held.resolved.backend.name)
            gpu_usd = meter.stop(mark) if isinstance(meter, BackendMeter) else 0.0
        if held.replica is not None:
            held.replica.load.in_flight -= 1
        if not isinstance(held.reply, Completion):
            await held.reply.aclose()  # idempotent; drops the connection if the stream was cut short
        if counted_out is not None and isinstance(mark, Slot):
            gpu_usd = await mark.cost(counted_out)
        return gpu_usd

    def _labels(self) -> tuple[str, str, str]:
        decision = self.decision
        if decision is None:
            return NO_ROUTE
        if self.resolved is not None:
            return decision.route, self.resolved.backend.name, self.resolved.model.name
        # Failed: labelled as the target tried last, as its success would have been.
        target = self.tried or decision.target
        return decision.route_of(target), target.backend, self.runtime.model_name(target)

    def _report(
        self, failure: Exception | None, refusal: Response | None, cost: float, usage: Usage | None
    ) -> None:
        """The request's log line and, when tracing, its span's end."""
        if self.span is None and not requests_log.isEnabledFor(logging.INFO):
            return  # neither is wanted: nothing to build
        status = (
            refusal.status_code
            if refusal is not None
            else 499
            if isinstance(failure, ClientGone) or (failure is not None and not self._responded)
            else 200
        )
        route, backend, model = self._labels()
        decision = self.decision
        seconds = time.perf_counter() - self.started
        log_request(
            RequestLine(
                self.request_id,
                self.request.scope["path"],
                route,
                decision.reason if decision is not None else "none",
                backend,
                model,
                status,
                usage.input if usage is not None else None,
                usage.output if usage is not None else None,
                cost,
                seconds * 1000,
            )
        )
        if self.span is not None:
            model_asked = self.body.get("model")
            self.span.finish(
                model=model_asked if isinstance(model_asked, str) else None,
                decision=decision,
                backend=backend if decision is not None else None,
                response_model=self.resolved.model.name if self.resolved is not None else None,
                system=self.resolved.provider.dialect if self.resolved is not None else None,
                usage=usage,
                cost=cost,
                status=status,
                error=failure,
            )

    def _account(
        self, failure: Exception | None, refusal: Response | None, gpu_usd: float
    ) -> tuple[float, Usage | None]:
        """Record the outcome; its cost and usage."""
        recorder = self.state.recorder
        team = self.principal.team if self.principal is not None else None
        if self.resolved is None or self.decision is None or (failure is not None and not self._responded):
            status = f"{refusal.status_code // 100}xx" if refusal is not None else "cancelled"
            recorder.refused(*self._labels(), status, gpu_usd, team)
            if self.state.request_log is not None:
                self._log(status, None, gpu_usd or None, None)
            return gpu_usd, None
        t = self.tally
        if t.failed is not None:
            recorder.upstream_failed(self.resolved.backend.name, t.failed)
        usage, estimated = self._usage()
        seconds = time.perf_counter() - self.started
        inter_token = None
        if t.first_token_at is not None and t.last_event_at is not None and t.events > 1:
            inter_token = (t.last_event_at - t.first_token_at) / (t.events - 1)
        baseline = self.runtime.settings.baseline
        cost, baseline_usd = recorder.answered(
            outcome := Outcome(
                decision=self.decision,
                backend=self.resolved.backend.name,
                model=self.resolved.model,
                stream=self.stream,
                status_class="cancelled" if failure is not None else "5xx" if t.failed else "2xx",
                seconds=seconds,
                overhead=self._overhead(seconds),
                usage=usage,
                gpu_usd=gpu_usd,
                first_token=None if t.first_token_at is None else t.first_token_at - self.started,
                inter_token=inter_token,
                usage_estimated=estimated,
                baseline=baseline.price if baseline is not None else None,
                key_id=self.principal.key_id if self.principal is not None else None,
                team=team,
            )
        )
        if self.state.request_log is not None:
            self._log(outcome.status_class, outcome, cost, baseline_usd)
        return cost, usage

    def _log(self, status: str, o: Outcome | None, usd: float | None, baseline_usd: float | None) -> None:
        """The request's row in the request log (gateway/request_log.py): names and numbers only."""
        assert self.state.request_log is not None
        route, backend, model = self._labels()
        decision, principal, usage = self.decision, self.principal, o.usage if o is not None else None
        model_asked = self.body.get("model")
        self.state.request_log.add(
            Row(
                at=time.time() - (time.perf_counter() - self.started),
                request_id=self.request_id,
                key_id=principal.key_id if principal is not None else None,
                team=principal.team if principal is not None else None,
                router=model_asked if decision is not None and decision.routed else None,
                route=route,
                reason=decision.reason if decision is not None else None,
                backend=backend,
                model=model,
                input_tokens=usage.input if usage is not None else None,
                output_tokens=usage.output if usage is not None else None,
                cached_tokens=usage.cached if usage is not None else None,
                usd=usd,
                baseline_usd=baseline_usd,
                seconds=time.perf_counter() - self.started,
                ttft_seconds=o.first_token if o is not None else None,
                status=status,
                path=self.request.scope["path"],
            )
        )

    def _usage(self) -> tuple[Usage | None, bool]:
        """What the answer used, and whether it is an estimate."""
        usage = self.tally.usage
        if usage is None and self.stream and self.decision is not None:
            # A stream cut short: count prompt characters, a token per event.
            return Usage(input=estimate_tokens(self.measured().total_chars), output=self.tally.events), True
        return usage, False

    def _settle(self, gpu_usd: float) -> None:
        """Replace the ticket's estimates by what the request used and cost (as the metrics count it)."""
        assert self.ticket is not None
        usage = self._usage()[0] if self.resolved is not None else None
        tokens, usd = 0, gpu_usd
        if usage is not None and self.resolved is not None:
            tokens, usd = usage.input + usage.output, usd + cost_usd(usage, self.resolved.model.price)
        self.ticket.settle(tokens, usd)
        self.ticket = None

    async def _refuse(self, response: Response) -> None:
        if self.decision is not None:
            # Which route and backend failed: an operator reading a 429 or 502 needs to know.
            route, backend, _ = self._labels()
            response.headers["x-crossover-route"] = route
            response.headers["x-crossover-backend"] = backend
        response.headers[REQUEST_ID_HEADER] = self.request_id
        with contextlib.suppress(OSError):  # the client is gone: nobody to tell
            await response(self.request.scope, self._receive, self._send)
