"""What a classifier may look at, extracted once per request from the parsed body."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Final

# Scoring looks at the end of long prompts only: the question usually sits there, and it bounds the
# cost of an 8k-token prompt.
MAX_SCORED_CHARS = 8_000


# Cues of code and of mathematics, counted on the scored text by every classifier that uses them.
CODE_MARKS = ("```", "def ", "class ", "return ", "#include", "=>", "();", "{\n", "};", "import ")
MATH_MARKS = (
    "=",
    "^",
    "\u221a",
    "\u2211",
    "\u222b",
    "\u2264",
    "\u2265",
    "\u00b1",
    "\u00d7",
    "\u00f7",
)  # root, sum, integral, <=, >=, +-, times, divide


def estimate_tokens(chars: int) -> int:
    """~4 characters a token for English text with the common BPE vocabularies (CJK text runs about
    one a token, so this undercounts it): for rules on context length, and for usage when a backend
    reported none (a stream cut short), counted as estimated."""
    return (chars + 3) // 4


def count_marks(text: str, marks: tuple[str, ...], cap_each: int) -> int:
    """Occurrences of each mark, each counted at most `cap_each` times (str.count: C speed; map, not a
    generator, keeps the loop in C too: 3x faster on a short prompt). Most marks are absent, and `in`
    finds that for less than a count does."""
    found = [*map(text.count, filter(text.__contains__, marks))]
    total = sum(found)
    if total <= cap_each:  # no mark reached the cap (the usual case): min() per mark would cost ~half
        return total
    return sum(map(min, found, repeat(cap_each, len(found))))


_ASCII_DIGITS = string.digits.encode()


def count_digits(text: str) -> int:
    """The ASCII digits in `text`. ASCII text (most prompts) loses them in one pass of bytes.translate,
    5x faster than ten counts (which other text still takes)."""
    if text.isascii():
        return len(text) - len(text.encode().translate(None, _ASCII_DIGITS))
    return sum(map(text.count, string.digits))


# Read-only through `Final` (mypy), not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, ~3x the cost of a plain one (~1 us of every request). Hashable as before.
@dataclass(slots=True, unsafe_hash=True)
class Features:
    text: Final[str]  # the last user turn (or completion prompt), cut to MAX_SCORED_CHARS from the end
    total_chars: Final[int]  # every text part of every message
    turns: Final[int]  # user turns
    has_tools: Final[bool]
    response_format: Final[str]  # "text", "json_object" or "json_schema"
    max_tokens: Final[int | None]


def _content_text(content: Any) -> str:
    """Text of an OpenAI message content or an Anthropic content-block list, tool results included."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part.get("type") == "tool_result":
            texts.append(_content_text(part.get("content")))
    return "\n".join(texts)


def _only_tool_results(content: Any) -> bool:
    return (
        isinstance(content, list)
        and bool(content)
        and all(isinstance(p, dict) and p.get("type") == "tool_result" for p in content)
    )


def extract_features(request: Mapping[str, Any]) -> Features:
    """Works for chat requests (`messages`) and completion requests (`prompt`)."""
    system = request.get("system")  # Anthropic's top-level system prompt
    total = len(_content_text(system)) if system is not None else 0
    turns = 0
    last_user = ""
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            text = content if isinstance(content, str) else _content_text(content)  # str: the usual case
            total += len(text)
            if message.get("role") == "user":
                turns += 1
                # In an agent loop the newest user turn may hold only tool results: the task is
                # still the last turn a person wrote, so keep scoring that one.
                if text and (text is content or not _only_tool_results(content)):
                    last_user = text
    else:
        prompt = request.get("prompt")
        if isinstance(prompt, list):
            prompt = "\n".join(p for p in prompt if isinstance(p, str))
        if isinstance(prompt, str):
            last_user, total, turns = prompt, len(prompt), 1
    response_format = request.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    return Features(  # positional: keywords cost ~0.3 us more a call
        last_user[-MAX_SCORED_CHARS:],
        total,
        turns,
        bool(request.get("tools") or request.get("functions")),
        kind if kind in ("json_object", "json_schema") else "text",
        max_tokens if isinstance(max_tokens, int) else None,
    )
