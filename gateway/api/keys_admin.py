"""`/admin/keys` and `/admin/teams`: the keys store over HTTP, for the operator (gateway/keys.py).

Guarded by `server.admin_key`, sent like any gateway key (`Authorization: Bearer`, or `x-api-key`).
Without an admin key or a keys store configured, every /admin path answers 404 and says which is
missing. A key's text is in the answer to create and rotate only; listings carry ids.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, InvalidRequest, NotFound, Unauthenticated, error_response
from gateway.keyring import Keyring
from gateway.keys import Key, Keys, KeyStoreError, Scope, Team
from gateway.principal import Limits
from gateway.state import GatewayState
from gateway.store import StoreError
from providers.base import ErrorCode

Names = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=1000)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsBody(_Strict):
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None
    usd_per_day: Annotated[float, Field(gt=0)] | None = None
    usd_per_month: Annotated[float, Field(gt=0)] | None = None

    def limits(self) -> Limits:
        return Limits(**self.model_dump())


class ScopeBody(_Strict):
    routers: Names | None = None  # None: any
    backends: Names | None = None
    models: Names | None = None
    local_only: bool = False
    limits: LimitsBody = LimitsBody()

    def scope(self) -> Scope:
        return Scope(
            *(frozenset(v) if (v := getattr(self, k)) is not None else None for k in Scope.__slots__)
        )


class TeamBody(ScopeBody):
    name: Annotated[str, Field(min_length=1, max_length=64)]


class TeamUpdateBody(_Strict):
    """Only what is given changes."""

    routers: Names | None = None
    backends: Names | None = None
    models: Names | None = None
    local_only: bool | None = None
    limits: LimitsBody | None = None


class KeyBody(ScopeBody):
    team: Annotated[str, Field(min_length=1, max_length=64)]
    name: Annotated[str, Field(max_length=200)] = ""
    expires_at: float | None = None  # Unix time; None: never


Handler = Callable[[Request, Keys], Awaitable[Any]]


def _admin(handler: Handler, status: int = 200) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        state: GatewayState = request.app.state.gateway
        try:
            keyring = _guard(request, state)
            result = await handler(request, keyring.keys)
            await keyring.refresh()  # this gateway sees its own change at once; others within 1 s
        except KeyStoreError as exc:
            missing = str(exc).startswith("no ")
            error = (NotFound if missing else InvalidRequest)(str(exc), code=ErrorCode.INVALID_VALUE)
            return error_response(error)
        except StoreError:
            return error_response(StoreUnavailable("the keys store cannot be reached; see the gateway's log"))
        except Exception as exc:
            return error_response(exc)
        return Response(orjson.dumps(result), status_code=status, media_type="application/json")

    return endpoint


class StoreUnavailable(GatewayError):
    status = 503


def _guard(request: Request, state: GatewayState) -> Keyring:
    settings = state.runtime.settings
    if settings.admin_key is None:
        raise NotFound("The admin API is off: set server.admin_key to use it.", code=ErrorCode.UNKNOWN_URL)
    if state.keyring is None:
        raise NotFound(
            "No keys store: set server.keys_store to manage keys and teams.", code=ErrorCode.UNKNOWN_URL
        )
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = request.headers.get("x-api-key", "")
    if not hmac.compare_digest(token.encode(), settings.admin_key.encode()):
        raise Unauthenticated("Send the admin key (server.admin_key) as 'Authorization: Bearer <key>'.",
                              code=ErrorCode.INVALID_API_KEY)  # fmt: skip
    return state.keyring


async def _body(request: Request, model: type[_Strict]) -> Any:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"{where}: {first['msg']}", param=where, code=ErrorCode.INVALID_VALUE) from None


def _listing(items: list[Any]) -> dict[str, Any]:
    return {"object": "list", "data": [item.public() for item in items]}


async def _list_teams(request: Request, keys: Keys) -> Any:
    return _listing(await keys.teams())


async def _create_team(request: Request, keys: Keys) -> Any:
    body: TeamBody = await _body(request, TeamBody)
    team = Team(body.name, body.scope(), body.local_only, body.limits.limits())
    return (await keys.create_team(team)).public()


async def _update_team(request: Request, keys: Keys) -> Any:
    body: TeamUpdateBody = await _body(request, TeamUpdateBody)
    team = await keys.team(request.path_params["name"])
    given = body.model_fields_set
    scope = Scope(
        *(
            (frozenset(v) if (v := getattr(body, k)) is not None else None)
            if k in given
            else getattr(team.scope, k)
            for k in Scope.__slots__
        )
    )
    local_only = body.local_only if body.local_only is not None else team.local_only
    limits = body.limits.limits() if body.limits is not None else team.limits
    return (await keys.update_team(Team(team.name, scope, local_only, limits))).public()


async def _list_keys(request: Request, keys: Keys) -> Any:
    return _listing(await keys.keys(request.query_params.get("team")))


async def _create_key(request: Request, keys: Keys) -> Any:
    body: KeyBody = await _body(request, KeyBody)
    wanted = Key("", body.team, body.name, body.scope(), body.local_only, body.limits.limits(),
                 expires_at=body.expires_at)  # fmt: skip
    key, text = await keys.create_key(wanted)
    return {**key.public(), "key": text}


async def _rotate_key(request: Request, keys: Keys) -> Any:
    key, text = await keys.rotate_key(request.path_params["id"])
    return {**key.public(), "key": text}


async def _revoke_key(request: Request, keys: Keys) -> Any:
    return (await keys.revoke_key(request.path_params["id"])).public()


list_teams = _admin(_list_teams)
create_team = _admin(_create_team, 201)
update_team = _admin(_update_team)
list_keys = _admin(_list_keys)
create_key = _admin(_create_key, 201)
rotate_key = _admin(_rotate_key)
revoke_key = _admin(_revoke_key)
