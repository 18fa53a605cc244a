"""What a request asks for, as a few cheap numbers: its length and turns, the output it wants (code, a
format, a long text), the reasoning it needs (math, steps, proofs), its constraints, and whether it is
a closed question with options. learned-v2 puts these beside the embedding; they are what is left of a
prompt's difficulty once its topic is known, and they read the same on any source.

Every cue is a count over the lower-cased scored text (`str.count`, C speed) or a length, so an 8k-token
prompt costs a few tens of microseconds. Names and order are part of the artifact format.
"""

from __future__ import annotations

import math

from classifier.features import CODE_MARKS, MATH_MARKS, Features, count_digits, count_marks

# Word cues, counted as substrings of the lower-cased text (" prove" also counts "proves", which is
# wanted). Each group is capped at CAP so one repetitive prompt cannot dominate its feature.
CAP = 5
REASONING = (
    " why",
    "explain",
    " prove",
    "derive",
    "calculate",
    "compute",
    " solve",
    "step by step",
    "how many",
)
CREATION = ("write ", "create ", "generate", "compose", "essay", "story", " poem", "draft", "design ")
CONSTRAINTS = (
    " must ",
    " exactly",
    "at least",
    "at most",
    "without ",
    " only ",
    " words",
    "format",
    "bullet",
)
CODE_WORDS = ("function", "python", "code", "program", "algorithm", "sql", "javascript", "implement")
LATEX = ("$", "\\frac", "\\sqrt", "\\", "_{", "^{")
# A request that opens with one of these is an instruction (open-ended output), not a question.
IMPERATIVES = frozenset(
    ("write", "create", "generate", "give", "list", "explain", "describe", "tell", "make", "translate",
     "summarize", "rewrite", "help")
)  # fmt: skip
OPTION_MARKS = ("\na. ", "\nb. ", "\nc. ", "\nd. ", "\na) ", "\nb) ", "\nc) ", "\nd) ", "options:")

CUE_NAMES = (
    "log_total_chars",
    "log_last_turn_chars",
    "extra_turns",
    "has_tools",
    "structured_output",
    "log_max_tokens",
    "code_marks",
    "math_marks",
    "digit_share",
    "log_lines",
    "questions",
    "reasoning_words",
    "creation_words",
    "constraint_words",
    "code_words",
    "latex_marks",
    "has_options",
    "mean_word_chars",
    "imperative",
)


def _any_in(text: str, chars: str) -> bool:
    """A shortcut before a group of counts: every mark of the group holds one of `chars`."""
    return any(map(text.__contains__, chars))


def first_word(low: str) -> str:
    words = low[:24].split(None, 1)
    return words[0].strip(",.:!") if words else ""


def cue_vector(features: Features) -> list[float]:
    """The request's cues, in the order of CUE_NAMES."""
    text = features.text
    n = len(text)
    low = text.lower()
    words = low.count(" ") + 1 if n else 0
    digits = count_digits(text) if n else 0
    return [
        math.log1p(features.total_chars),
        math.log1p(n),
        float(min(max(features.turns - 1, 0), 10)),
        1.0 if features.has_tools else 0.0,
        0.0 if features.response_format == "text" else 1.0,
        math.log1p(features.max_tokens) if features.max_tokens else 0.0,
        float(min(count_marks(text, CODE_MARKS, 3), 10)),
        float(min(count_marks(text, MATH_MARKS, 3), 10)),
        digits / n if n else 0.0,
        math.log1p(text.count("\n")),
        float(min(text.count("?"), CAP)),
        float(min(count_marks(low, REASONING, 2), CAP)),
        float(min(count_marks(low, CREATION, 2), CAP)),
        float(min(count_marks(low, CONSTRAINTS, 2), CAP)),
        float(min(count_marks(low, CODE_WORDS, 2), CAP)),
        float(min(count_marks(text, LATEX, 3), 10)) if _any_in(text, "$\\{") else 0.0,
        1.0 if _any_in(low, "\n:") and count_marks(low, OPTION_MARKS, 1) >= 3 else 0.0,
        min(n / words, 20.0) if words else 0.0,
        1.0 if first_word(low) in IMPERATIVES else 0.0,
    ]


def cue_map(features: Features) -> dict[str, float]:
    """The cues by name: how the outcome store keeps them (names, so a later cue set cannot misread)."""
    return dict(zip(CUE_NAMES, cue_vector(features), strict=True))


def cues_from_map(found: dict[str, float]) -> list[float] | None:
    """The vector back from `cue_map`'s form; None when it was written with other cues."""
    if set(found) != set(CUE_NAMES):
        return None
    return [float(found[name]) for name in CUE_NAMES]
