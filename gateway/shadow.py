"""Shadow judging: how good are the local answers, on this deployment's own traffic?

For a sample of one route's requests (`routers.NAME.shadow`, by default the local route), once the
client has its whole answer, the same request goes to the router's other target (whole, even if the
client streamed), and a judge model compares the two answers pairwise, once in each order to cancel
its position bias. The outcome is counted in the metrics and kept in the outcome store
(gateway/store/), where `crossover calibrate --quality-target` and `crossover outcomes export` read it.

Never on the client's time: `sample` is decided with the route, the answer's bytes are kept while it is
sent, and the job starts only after the exchange delivered it, as a task the gateway keeps (and cancels
on shutdown). Never for a request a rule, a key's scope or the route header placed, nor one whose key
may not reach the other target or the judge, nor one with a key in `exclude_api_keys`.

Limits: `max_concurrent` jobs at once (more are skipped, not queued), and `max_usd_per_day` per UTC day
for the other answers and the judge's calls, priced with the gateway's price table. A job reserves a
pessimistic estimate of its cost before it starts and settles to the real cost when done, so
concurrent jobs cannot together overrun the day's budget unless the backends report more tokens than
estimated (prompts at 2 characters a token, answers at their max_tokens or DEFAULT_ANSWER_TOKENS).
The budget is per worker: `max_usd_per_day` is divided among a replica's workers.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import orjson

from classifier import extract_features
from classifier.cues import cue_map
from gateway._answers import answer_text
from gateway.accounting import cost_usd
from gateway.config import ModelEntry, Price, Router, Settings, Shadow, Target
from gateway.recorder import Recorder
from gateway.routing import Decision, other_route, target_of
from gateway.runtime import Runtime
from gateway.store import Judged, OutcomeStore, StoreError, open_store
from providers.base import Dialect, ErrorCode, UnsupportedRequest, UpstreamError, Usage
from providers.bridges import bridge_for

log = logging.getLogger("crossover")

Verdict = Literal["local_better", "tie", "api_better", "both_bad"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
ErrorKind = Literal[
    "answer_failed",
    "answer_timeout",
    "judge_failed",
    "judge_timeout",
    "judge_unreadable",
    "store_failed",
    "internal",
]
# Placed, not decided by the score (rule, scope, header), or sent where the other target is busy or failing.
NEVER_SHADOWED = frozenset({"rule", "scope", "header", "spill", "fallback"})

# The judge prompt, after MT-Bench's pairwise judge (Zheng et al. 2023) and Arena-Hard's, with a fourth
# verdict for two bad answers. Fixed: outcomes judged with different prompts would not compare.
JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. You should choose the assistant that follows the "
    "user's instructions and answers the user's question better. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their "
    "responses; a tool call is judged as the step it takes toward the answer. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any position biases and ensure "
    "that the order in which the responses were presented does not influence your decision. Do not allow "
    "the length of the responses to influence your evaluation. Do not favor certain names of the "
    "assistants. Be as objective as possible. After providing your explanation, output your final verdict "
    'by strictly following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is '
    'better, "[[C]]" for a tie, and "[[D]]" if both responses are bad.'
)
JUDGE_USER = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
)
JUDGE_MAX_TOKENS = 512
DEFAULT_ANSWER_TOKENS = 1024  # what the estimate assumes of an answer without max_tokens
_TEMPLATE_TOKENS = 400
_VERDICT = re.compile(r"\[\[([ABCD])\]\]")
_BY_LETTER: dict[str, Verdict] = {"A": "local_better", "B": "api_better", "C": "tie", "D": "both_bad"}
_SWAPPED: dict[Verdict, Verdict] = {
    "local_better": "api_better",
    "api_better": "local_better",
    "tie": "tie",
    "both_bad": "both_bad",
}


def read_verdict(text: str, local_first: bool) -> Verdict | None:
    """The judge's last `[[X]]` as a verdict about the local answer; None when it gave none."""
    found = _VERDICT.findall(text)
    if not found:
        return None
    verdict = _BY_LETTER[found[-1]]
    return verdict if local_first else _SWAPPED[verdict]


def combine(local_first: Verdict, api_first: Verdict) -> Verdict:
    """Both orders agree: that verdict; they disagree (the judge followed the position): a tie, as
    MT-Bench counts an inconsistent pair."""
    return local_first if local_first == api_first else "tie"


def prompt_of(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ("system", "messages", "prompt", "tools") if k in body}


def fingerprint(prompt: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(prompt, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text") or part.get("content") or "") for part in content if isinstance(part, dict)
        )
    return "" if content is None else str(content)


def question_text(body: dict[str, Any]) -> str:
    """The request as the judge reads it: a lone user message as itself, a conversation turn by turn."""
    if "prompt" in body:
        return _text(body["prompt"])
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    turns = [("system", _text(body["system"]))] if body.get("system") else []
    turns += [(str(m.get("role")), _text(m.get("content"))) for m in messages]
    if len(turns) == 1 and turns[0][0] == "user":
        text = turns[0][1]
    else:
        text = "\n\n".join(f"[{role}]\n{content}" for role, content in turns)
    tools = [(t.get("function") or t).get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
    return text + (f"\n\n(Tools offered: {', '.join(map(str, tools))})" if tools else "")


def _answer_limit(body: dict[str, Any]) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_ANSWER_TOKENS


def estimate_usd(body: dict[str, Any], answer: str, other: Price, judge: Price) -> float:
    """An upper estimate of a job's cost: the other answer, then the judge twice."""
    question = len(question_text(body)) // 2 + 64
    limit = _answer_limit(body)
    judge_input = question + len(answer) // 2 + limit + _TEMPLATE_TOKENS
    once = judge_input * judge.input + JUDGE_MAX_TOKENS * judge.output
    return question * other.input + limit * other.output + 2 * once


class Budget:
    """One router's spend on the current UTC day: what finished jobs cost, and what running ones
    reserved."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.day = self._today()
        self.spent = 0.0
        self.reserved = 0.0

    def _today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self._clock(), datetime.UTC).date()

    def _roll(self) -> None:
        today = self._today()
        if today != self.day:
            self.day, self.spent = today, 0.0

    def reserve(self, usd: float, cap: float) -> bool:
        self._roll()
        if self.spent + self.reserved + usd > cap:
            return False
        self.reserved += usd
        return True

    def settle(self, reserved: float, spent: float) -> None:
        self._roll()
        self.reserved = max(self.reserved - reserved, 0.0)
        self.spent += spent


@dataclass(slots=True)
class Sampled:
    """A request picked for judging, from its decision until its exchange ends: keeps the bytes the
    client is sent, to read its answer from."""

    router: Router
    shadow: Shadow
    answer: bytearray = field(default_factory=bytearray)

    def keep(self, content: bytes) -> None:
        self.answer += content

    async def tee(self, chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        async with aclosing(chunks) as inner:
            async for chunk in inner:
                self.answer += chunk
                yield chunk


@dataclass(frozen=True, slots=True)
class Job:
    """What a shadow job needs of the exchange that delivered the answer."""

    router: Router
    shadow: Shadow
    runtime: Runtime
    dialect: Dialect
    path: str  # the client's endpoint in its dialect, e.g. "/chat/completions"
    body: dict[str, Any]
    decision: Decision
    sent: bytes  # what the client was given, in its dialect
    streamed: bool
    model: ModelEntry  # who gave it
    usage: Usage | None


class ShadowFailed(Exception):
    def __init__(self, kind: ErrorKind) -> None:
        super().__init__(kind)
        self.kind = kind


class Shadows:
    """The gateway's shadow jobs, their limits and their stores; kept across config reloads."""

    def __init__(
        self,
        recorder: Recorder,
        hold: Callable[[Runtime], None],
        unhold: Callable[[Runtime], None],
        workers: int = 1,  # processes of this replica: each keeps its share of the day's budget
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.recorder = recorder
        self._hold, self._unhold = hold, unhold  # keep a job's runtime open until it is done
        self._clock = clock
        self.tasks: set[asyncio.Task[None]] = set()
        self.running: dict[str, int] = {}
        self.budgets: dict[str, Budget] = {}
        self.stores: dict[str, OutcomeStore] = {}
        self._workers = max(1, workers)

    def sample(
        self,
        runtime: Runtime,
        router: Router,
        decision: Decision,
        body: dict[str, Any],
        api_key: str | None,
        scope: frozenset[str] | None = None,
    ) -> Sampled | None:
        """Whether to judge this request, decided with its route (before any answer); `api_key` is the
        gateway key the client authenticated with, `scope` the backends its data may reach (None: any)."""
        shadow = router.shadow
        if shadow is None or decision.route != shadow.route or decision.reason in NEVER_SHADOWED:
            return None
        if (shadow.exclude_streams and body.get("stream") is True) or (
            shadow.exclude_tools and body.get("tools")
        ):
            return None
        if random.random() >= shadow.sample:
            return None
        if api_key is not None and api_key in shadow.exclude_api_keys:
            return None
        if scope is not None:
            other = target_of(router, other_route(shadow.route))
            if not {other.backend, shadow.judge.backend} <= scope:
                return None  # the key's data may not go where the shadow job would send it
        return Sampled(router, shadow)

    def start(self, job: Job) -> bool:
        """Start the job unless a limit says no (counted as skipped); never waits, never raises (it runs
        as the exchange ends, which must still let its request go)."""
        name = job.router.name
        try:
            return self._start(job)
        except Exception:
            log.exception("starting a shadow job of router %r failed", name)
            self.recorder.shadow_failed(name, "internal")
            return False

    def _start(self, job: Job) -> bool:
        name, shadow = job.router.name, job.shadow
        if self.running.get(name, 0) >= shadow.max_concurrent:
            self.recorder.shadow_skipped(name, "busy")
            return False
        answer = answer_text(job.sent, job.dialect, job.streamed)
        settings = job.runtime.settings
        other = target_of(job.router, other_route(shadow.route))
        estimate = estimate_usd(job.body, answer, _price(settings, other), _price(settings, shadow.judge))
        budget = self.budgets.setdefault(name, Budget(self._clock))
        if not budget.reserve(estimate, shadow.max_usd_per_day / self._workers):
            self.recorder.shadow_skipped(name, "budget")
            return False
        self.running[name] = self.running.get(name, 0) + 1
        self._hold(job.runtime)
        task = asyncio.get_running_loop().create_task(self._run(job, answer, estimate))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _run(self, job: Job, answer: str, estimate: float) -> None:
        name = job.router.name
        spent = [0.0]
        try:
            outcome = await judge(job, answer, spent)
            self.recorder.shadow_judged(name, outcome.verdict, outcome.score)
            await self.store(job.shadow.store).add(outcome)
        except ShadowFailed as exc:
            self.recorder.shadow_failed(name, exc.kind)
        except StoreError as exc:
            log.warning("shadow judging of router %r: %s", name, exc)
            self.recorder.shadow_failed(name, "store_failed")
        except Exception:  # a bug must not leave the budget reserved or the count running
            log.exception("shadow judging of router %r failed", name)
            self.recorder.shadow_failed(name, "internal")
        finally:
            self.running[name] -= 1
            self.budgets[name].settle(estimate, spent[0])
            if spent[0]:
                self.recorder.shadow_spent(name, spent[0])
            self._unhold(job.runtime)

    def store(self, url: str) -> OutcomeStore:
        """The store at `url`, opened on first use (and created then, for SQLite)."""
        found = self.stores.get(url)
        if found is None:
            found = self.stores[url] = open_store(url)
        return found

    async def close(self) -> None:
        """Shutdown: running jobs are cancelled (their outcomes lost, the client's answers long sent)."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for store in self.stores.values():
            await store.close()
        self.stores.clear()


def _price(settings: Settings, target: Target) -> Price:
    """The target's configured price (a discovered model has none: free, as in the request path)."""
    entries = settings.backends[target.backend].models
    return next((m.price for m in entries if target.model in (None, m.name)), Price())


async def _complete(
    job: Job, target: Target, dialect: Dialect, path: str, body: dict[str, Any], failed: ErrorKind
) -> tuple[str, Usage | None, ModelEntry]:
    """One whole answer from `target`: (its text, usage, model). Raises ShadowFailed."""
    timeout: ErrorKind = "answer_timeout" if failed == "answer_failed" else "judge_timeout"
    try:
        async with asyncio.timeout(job.shadow.timeout):
            resolved = await job.runtime.resolve(target)
            bridge = bridge_for(dialect, path, resolved.provider, body)
            outgoing = bridge.request(resolved.model.upstream)
            reply = await resolved.provider.complete(bridge.backend_path, outgoing)
        raw, usage = bridge.response(reply)
    except TimeoutError:
        raise ShadowFailed(timeout) from None
    except UpstreamError as exc:
        if exc.code == ErrorCode.UPSTREAM_TIMEOUT:
            raise ShadowFailed(timeout) from None
        log.info("shadow call to backend %r failed: %s", target.backend, exc.message)
        raise ShadowFailed(failed) from None
    except (UnsupportedRequest, ValueError, KeyError, TypeError):
        raise ShadowFailed(failed) from None
    return answer_text(raw, dialect, streamed=False), usage, resolved.model


def _whole(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("stream", "stream_options")}


def _spend(usage: Usage | None, model: ModelEntry) -> float:
    return cost_usd(usage, model.price) if usage is not None else 0.0


async def judge(job: Job, answer: str, spent: list[float]) -> Judged:
    """The other answer, the judge in both orders, and the row that records them. `spent` accrues the
    cost of each call as it returns, so a job that fails midway is still charged what it used."""
    shadow, router, decision = job.shadow, job.router, job.decision
    other_target = target_of(router, other_route(shadow.route))
    other, other_usage, other_model = await _complete(
        job, other_target, job.dialect, job.path, _whole(job.body), "answer_failed"
    )
    spent[0] += _spend(other_usage, other_model)
    local, api = (answer, other) if shadow.route == "local" else (other, answer)
    question = question_text(job.body)

    async def ask(local_first: bool) -> tuple[Verdict, float]:
        a, b = (local, api) if local_first else (api, local)
        body = {
            "model": "judge",
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_USER.format(question=question, a=a, b=b)},
            ],
            "max_tokens": JUDGE_MAX_TOKENS,
            "temperature": 0,
        }
        text, usage, model = await _complete(
            job, shadow.judge, "openai", "/chat/completions", body, "judge_failed"
        )
        cost = _spend(usage, model)
        spent[0] += cost
        verdict = read_verdict(text, local_first)
        if verdict is None:
            raise ShadowFailed("judge_unreadable")
        return verdict, cost

    # A task group, not gather: when one order fails, the other is cancelled before the job settles its
    # spend and lets go of its runtime (gather left it running, unbilled, on a runtime a reload closed).
    try:
        async with asyncio.TaskGroup() as group:
            asked = group.create_task(ask(True)), group.create_task(ask(False))
    except* ShadowFailed as failed:
        raise failed.exceptions[0] from None
    (first, first_usd), (second, second_usd) = asked[0].result(), asked[1].result()
    ours = (_spend(job.usage, job.model), job.usage or Usage(0, 0))
    theirs = (_spend(other_usage, other_model), other_usage or Usage(0, 0))
    (local_usd, local_usage), (api_usd, api_usage) = (
        (ours, theirs) if shadow.route == "local" else (theirs, ours)
    )
    local_model, api_model = (job.model, other_model) if shadow.route == "local" else (other_model, job.model)
    prompt = prompt_of(job.body)
    classifier = job.runtime.classifiers.get(router.name)
    version = getattr(classifier, "version", None)
    return Judged(
        id=uuid.uuid4().hex,
        at=time.time(),
        router=router.name,
        classifier=router.classifier,
        classifier_version=str(version) if version is not None else None,
        score=decision.score,
        threshold=decision.threshold,
        route=decision.route,
        local_model=local_model.name,
        api_model=api_model.name,
        verdict=combine(first, second),
        verdict_local_first=first,
        verdict_api_first=second,
        judge=f"{shadow.judge.backend}/{job.runtime.model_name(shadow.judge)}",
        local_usd=local_usd,
        api_usd=api_usd,
        judge_usd=first_usd + second_usd,
        local_input_tokens=local_usage.input,
        local_output_tokens=local_usage.output,
        api_input_tokens=api_usage.input,
        api_output_tokens=api_usage.output,
        prompt_sha256=fingerprint(prompt),
        prompt=orjson.dumps(prompt).decode() if shadow.store_prompts else None,
        # counts and lengths, no text: what retraining needs when the prompt is not kept
        features=orjson.dumps(cue_map(extract_features(job.body))).decode(),
    )
