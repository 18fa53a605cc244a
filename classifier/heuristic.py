"""The baseline: hand-weighted cues of difficulty, squashed into [0, 1].

Cues are found with str methods and set lookups rather than regular expressions: on an 8k-character
prompt that is ~0.1 ms instead of ~3 ms.
"""

from __future__ import annotations

import math
import string

from classifier.features import CODE_MARKS, MATH_MARKS, Features, count_marks

_MATH_WORDS = frozenset(
    [
        "prove",
        "proof",
        "theorem",
        "lemma",
        "integral",
        "derivative",
        "equation",
        "equations",
        "matrix",
        "probability",
        "solve",
        "calculate",
        "compute",
        "polynomial",
        "eigenvalue",
        "modulo",
    ]
)
_MULTISTEP_WORDS = frozenset(
    [
        "step-by-step",
        "analyze",
        "analyse",
        "compare",
        "tradeoff",
        "tradeoffs",
        "trade-offs",
        "design",
        "optimize",
        "optimise",
        "debug",
        "refactor",
        "implement",
        "derive",
        "justify",
        "evaluate",
        "explain",
        "why",
        "architecture",
    ]
)
# Everything but letters and hyphens becomes a space, so `split()` yields lower-case words.
_SEPARATORS = string.punctuation.replace("-", "") + string.digits + "\t\n\r"
_WORDS_ONLY = str.maketrans({c: " " for c in _SEPARATORS})
# The same for ASCII text (most prompts) as bytes: str.translate looks each character up in a dict
# (~1 us on a one-line prompt), bytes.translate in a table.
_ASCII_WORDS_ONLY = bytes.maketrans(_SEPARATORS.encode(), b" " * len(_SEPARATORS))


_TERMS = ("length", "code", "math", "multi_step", "turns", "tools", "response_format", "max_tokens")
_FORMAT_WEIGHTS = {"json_schema": 1.0, "json_object": 0.5}


def _words_only(low: str) -> str:
    if low.isascii():
        return low.encode().translate(_ASCII_WORDS_ONLY).decode()
    return low.translate(_WORDS_ONLY)


def _capped(n: int, cap: int) -> int:
    return n if n < cap else cap


class HeuristicClassifier:
    """Weights were set by hand so that a short chit-chat turn scores ~0.1 and a long, code- or
    math-heavy, multi-step request with a strict output format scores above 0.8."""

    BIAS = -2.2

    def explain(self, features: Features) -> list[tuple[str, float]]:
        """The logit's terms but the bias; score() is the logistic of their sum plus BIAS."""
        return list(zip(_TERMS, self._terms(features), strict=True))

    def score(self, features: Features) -> float:
        # The terms' values without their names: score() runs on every routed request.
        z = self.BIAS + sum(self._terms(features))
        return 1.0 / (1.0 + math.exp(-z))

    @staticmethod
    def _terms(features: Features) -> tuple[float, ...]:
        """The values of the terms named in _TERMS, in that order."""
        text = features.text
        low = text.lower()
        words = frozenset(_words_only(low).split())
        code = count_marks(text, CODE_MARKS, 2)
        math_cues = count_marks(text, MATH_MARKS, 2) + len(words & _MATH_WORDS)
        steps = len(words & _MULTISTEP_WORDS) + ("step by step" in low)
        turns = features.turns
        max_tokens = features.max_tokens
        return (
            0.55 * math.log1p(features.total_chars / 500),
            0.45 * _capped(code, 4),
            0.35 * _capped(math_cues, 5),
            0.6 * _capped(steps, 3),
            0.15 * min(turns - 1, 6) if turns > 1 else 0.0,
            0.8 if features.has_tools else 0.0,
            _FORMAT_WEIGHTS.get(features.response_format, 0.0),
            0.4 if max_tokens is not None and max_tokens > 2000 else 0.0,
        )
