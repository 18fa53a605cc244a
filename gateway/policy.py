"""What a key may reach, and where its data may go: pure checks on a `Principal`.

Scopes (routers, backends, concrete models) refuse with a 403 naming what is not allowed. The data
policy `local_only` narrows the backends a request may reach to the local ones, so the routing
policy (gateway/routing.py `within_scope`) does the rest as for any scope: a request the router
(or the route header) sends to the API is answered locally instead (reason "scope"), a fallback or
spill-over to the API is never planned, and shadow judging, which would send the prompt to the other
target and a judge, is skipped. A concrete API model is refused: the client asked for that model by
name, and answering with another would be a lie.

Local means self-hosted: a backend with a GPU cost (`gpu_usd_per_hour` > 0), or one that is some
router's `local` target and no router's `api` target nor a shadow judge.
"""

from __future__ import annotations

from gateway.config import Settings, Target
from gateway.errors import PermissionDenied
from gateway.principal import Principal
from providers.base import ErrorCode


def local_backends(settings: Settings) -> frozenset[str]:
    external: set[str] = set()
    local: set[str] = set()
    for router in settings.routers.values():
        local.add(router.local.backend)
        external.add(router.api.backend)
        if router.shadow is not None:
            external.add(router.shadow.judge.backend)
    paid = {name for name, b in settings.backends.items() if b.gpu_usd_per_hour > 0}
    return frozenset(paid | (local - external))


def reachable(principal: Principal, local: frozenset[str]) -> frozenset[str] | None:
    """The backends a request of this principal may reach; None: any."""
    if not principal.local_only:
        return principal.backends
    return local if principal.backends is None else principal.backends & local


def may_use_router(principal: Principal, router: str) -> bool:
    return principal.routers is None or router in principal.routers


def may_use_model(principal: Principal, asked: str, backend: str, model: str, local: frozenset[str]) -> bool:
    """May it ask for this concrete model (as `asked`, naming `model` of `backend`)?"""
    scope = reachable(principal, local)
    if scope is not None and backend not in scope:
        return False
    return _model_allowed(principal.models, asked, backend, model)


def _model_allowed(allowed: frozenset[str] | None, asked: str, backend: str, model: str | None) -> bool:
    return allowed is None or bool({asked, model, f"{backend}/{model}"} & allowed)


def check_router(principal: Principal, router: str) -> None:
    if not may_use_router(principal, router):
        raise PermissionDenied(
            f"This key may not use router model '{router}'; it is limited to: {_listed(principal.routers or frozenset())}.",
            param="model",
            code=ErrorCode.ROUTER_NOT_ALLOWED,
        )


def check_model(principal: Principal, asked: str, target: Target, local: frozenset[str]) -> None:
    """A concrete model, as asked (`model` or `backend/model`) and as found (`target`)."""
    if principal.local_only and target.backend not in local:
        raise PermissionDenied(
            f"This key's data must stay local (local_only): model '{asked[:100]}' is served by "
            f"backend '{target.backend}', an external API. Use a router model or a local model.",
            param="model",
            code=ErrorCode.DATA_MUST_STAY_LOCAL,
        )
    allowed = principal.models
    if allowed is None or _model_allowed(allowed, asked, target.backend, target.model):
        return
    raise PermissionDenied(
        f"This key may not use model '{asked[:100]}'; it is limited to: {_listed(allowed)}.",
        param="model",
        code=ErrorCode.MODEL_NOT_ALLOWED,
    )


def _listed(names: frozenset[str]) -> str:
    return ", ".join(sorted(names)) or "nothing"
