"""`crossover keys create|list|rotate|revoke` and `crossover teams create|list|update`: the keys store
from a shell (gateway/keys.py does the work). Output is JSON; a key's text only in the output of
create and rotate, once."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.config import ConfigError, load
from gateway.keys import Key, Keys, KeyStoreError, Scope, Team
from gateway.principal import Limits
from gateway.store import StoreError, open_store


def _names(text: str) -> frozenset[str]:
    return frozenset(n.strip() for n in text.split(",") if n.strip())


def _scope_arguments(parser: argparse.ArgumentParser, updating: bool = False) -> None:
    parser.add_argument(
        "--routers", type=_names, help="router models it may use, comma-separated (default: any)"
    )
    parser.add_argument("--backends", type=_names, help="backends it may reach (default: any)")
    parser.add_argument("--models", type=_names, help="concrete models it may ask for (default: any)")
    parser.add_argument(
        "--local-only",
        action=argparse.BooleanOptionalAction,
        default=None if updating else False,
        help="its data never goes to an external API",
    )
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute")
    parser.add_argument("--usd-per-day", type=float)
    parser.add_argument("--usd-per-month", type=float)


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", help="the keys store: a SQLite file or a postgresql:// URL")
    where.add_argument("--config", help="a config file: its server.keys_store")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    if command == "keys":
        create = actions.add_parser("create", help="a new key; its text is printed once")
        create.add_argument("--team", required=True)
        create.add_argument("--name", default="", help="what it is for")
        create.add_argument("--expires-in-days", type=float)
        _scope_arguments(create)
        listing = actions.add_parser("list", help="keys (ids and settings, never their text)")
        listing.add_argument("--team")
        for name, text in (("rotate", "a new text for the key; the old one stops working"), ("revoke", "")):
            action = actions.add_parser(name, help=text or "the key stops working")
            action.add_argument("id")
        parsers = [create, listing, *(actions.choices[n] for n in ("rotate", "revoke"))]
    else:
        create = actions.add_parser("create", help="a new team")
        create.add_argument("name")
        _scope_arguments(create)
        update = actions.add_parser("update", help="change a team: only the options given")
        update.add_argument("name")
        _scope_arguments(update, updating=True)
        parsers = [create, actions.add_parser("list", help="teams"), update]
    for action in parsers:
        _store_arguments(action)


def _limits(args: argparse.Namespace, before: Limits | None = None) -> Limits:
    given = (args.rpm, args.tpm, args.usd_per_day, args.usd_per_month)
    if before is not None and all(v is None for v in given):
        return before
    return Limits(*given)


def _scope(args: argparse.Namespace, before: Scope | None = None) -> Scope:
    def pick(name: str) -> frozenset[str] | None:
        value: frozenset[str] | None = getattr(args, name)
        return value if value is not None or before is None else getattr(before, name)

    return Scope(pick("routers"), pick("backends"), pick("models"))


async def _keys(args: argparse.Namespace, keys: Keys) -> Any:
    if args.action == "create":
        expires = time.time() + args.expires_in_days * 86400 if args.expires_in_days else None
        wanted = Key(
            "", args.team, args.name, _scope(args), args.local_only, _limits(args), expires_at=expires
        )
        key, text = await keys.create_key(wanted)
        return {**key.public(), "key": text}
    if args.action == "list":
        return [k.public() for k in await keys.keys(args.team)]
    if args.action == "rotate":
        key, text = await keys.rotate_key(args.id)
        return {**key.public(), "key": text}
    return (await keys.revoke_key(args.id)).public()


async def _teams(args: argparse.Namespace, keys: Keys) -> Any:
    if args.action == "create":
        return (
            await keys.create_team(Team(args.name, _scope(args), args.local_only, _limits(args)))
        ).public()
    if args.action == "list":
        return [t.public() for t in await keys.teams()]
    team = await keys.team(args.name)
    local_only = team.local_only if args.local_only is None else args.local_only
    changed = Team(team.name, _scope(args, team.scope), local_only, _limits(args, team.limits))
    return (await keys.update_team(changed)).public()


def _store_url(args: argparse.Namespace) -> str:
    if args.store:
        return str(args.store)
    url = load(args.config).keys_store
    if url is None:
        raise ConfigError(f"{args.config}: server.keys_store is not set")
    return url


def run(args: argparse.Namespace) -> int:
    work: Callable[[argparse.Namespace, Keys], Awaitable[Any]] = _keys if args.command == "keys" else _teams

    async def main() -> Any:
        keys = Keys(open_store(_store_url(args)))
        try:
            return await work(args, keys)
        finally:
            await keys.store.close()

    try:
        result = asyncio.run(main())
    except (KeyStoreError, StoreError, ConfigError) as exc:
        print(f"crossover {args.command} {args.action}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
