"""The learned classifier: a static token embedding (distilled with model2vec from all-MiniLM-L6-v2)
averaged over the prompt, plus structural features, under a logistic-regression head.

Serving needs the standard library only. Because the head is linear in the mean embedding, training
folds the head into the embedding: each vocabulary token keeps one number, `E[token] . w / s` (its
contribution to the logit), so scoring is a WordPiece tokenisation, a mean of per-token numbers and a
handful of structural terms. The score is exactly the logistic regression's probability over
[mean embedding, structural features]; see `classifier/models/learned-v1/MODEL_CARD.md`.
"""

from __future__ import annotations

import json
import math
import re
import threading
import unicodedata
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.base import DEFAULT_THRESHOLD
from classifier.features import CODE_MARKS, MATH_MARKS, Features, count_digits, count_marks

DEFAULT_ARTIFACT = Path(__file__).parent / "models" / "learned-v1"

# ---------------------------------------------------------------------------------------------------
# Structural features. Names and order are part of the artifact format (head.json lists them).


STRUCTURAL_NAMES = (
    "log_total_chars",
    "log_last_turn_chars",
    "extra_turns",
    "has_tools",
    "json_object",
    "json_schema",
    "log_max_tokens",
    "code_marks",
    "math_marks",
    "digit_share",
)


def structural_features(features: Features) -> list[float]:
    """The request's shape, as floats in the order of STRUCTURAL_NAMES."""
    text = features.text
    n = len(text)
    code = count_marks(text, CODE_MARKS, 3)
    math_marks = count_marks(text, MATH_MARKS, 3)
    digits = count_digits(text) if n else 0
    return [
        math.log1p(features.total_chars),
        math.log1p(n),
        float(min(max(features.turns - 1, 0), 10)),
        1.0 if features.has_tools else 0.0,
        1.0 if features.response_format == "json_object" else 0.0,
        1.0 if features.response_format == "json_schema" else 0.0,
        math.log1p(features.max_tokens) if features.max_tokens else 0.0,
        float(min(code, 10)),
        float(min(math_marks, 10)),
        digits / n if n else 0.0,
    ]


# ---------------------------------------------------------------------------------------------------
# BERT uncased WordPiece (the distilled tokenizer: BertNormalizer lowercase, BertPreTokenizer, WordPiece
# with "##" continuations, words over 100 characters unknown). Unknown tokens are dropped, as
# model2vec's StaticModel does.


def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


# Control characters (C0, DEL, C1) and U+FFFD are dropped before lower-casing, as the all-Unicode path
# (`_normalise_slow`, BERT's normaliser) drops them: Python's lower-casing of a capital sigma depends on
# its neighbours. Then the text splits at whitespace and around each ASCII punctuation mark, at C speed.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
_CHUNK = re.compile(r"[^\s!-/:-@\[-`{-~]+|[!-/:-@\[-`{-~]")  # a run between spaces and marks, or a mark


def _normalise_slow(text: str) -> list[str]:
    out: list[str] = []
    for char in text:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD:
            continue
        cat = unicodedata.category(char)
        if char in " \t\n\r" or cat == "Zs":
            out.append(" ")
        elif cat in ("Cc", "Cf"):
            continue
        elif _is_cjk(cp):
            out.append(f" {char} ")
        else:
            out.append(char)
    text = unicodedata.normalize("NFD", "".join(out).lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words: list[str] = []
    for chunk in text.split():
        start = 0
        for i, char in enumerate(chunk):
            if _is_punctuation(char):
                if start < i:
                    words.append(chunk[start:i])
                words.append(char)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


def pre_tokenize(text: str) -> list[str]:
    """Lower-cased, accent-stripped words and single punctuation marks, as BERT's pre-tokenizer.

    ASCII is split at C speed; only the words holding other characters take the character-by-character
    Unicode path, so a prompt with a few symbols costs what ASCII does. (One known difference from the
    all-Unicode path: a non-ASCII format character, such as a zero-width space, between a capital sigma
    and a letter changes which lower-case sigma it becomes.)"""
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    words = _CHUNK.findall(text.lower())
    if text.isascii():
        return words
    out: list[str] = []
    for word in words:
        if word.isascii():
            out.append(word)
        else:
            out.extend(_normalise_slow(word))
    return out


MAX_WORD_CHARS = 100  # BERT's: a longer word is unknown
_UNKNOWN = (0.0, 0)


def wordpiece(word: str, vocab: dict[str, int]) -> list[int]:
    """Greedy longest-match-first pieces of one word; [] when the word cannot be split (unknown)."""
    if len(word) > MAX_WORD_CHARS:
        return []
    ids: list[int] = []
    start = 0
    n = len(word)
    while start < n:
        end = n
        found = -1
        while start < end:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            token_id = vocab.get(piece)
            if token_id is not None:
                found = token_id
                break
            end -= 1
        if found < 0:
            return []
        ids.append(found)
        start = end
    return ids


def tokenize(text: str, vocab: dict[str, int]) -> list[int]:
    ids: list[int] = []
    for word in pre_tokenize(text):
        ids.extend(wordpiece(word, vocab))
    return ids


# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LearnedModel:
    vocab: dict[str, int]
    token_weights: array  # type: ignore[type-arg]  # float per vocabulary id: E[id] . w_emb / s_emb
    bias: float
    structural_weights: tuple[float, ...]  # per STRUCTURAL_NAMES, already divided by the feature's std
    structural_means: tuple[float, ...]
    empty_text_logit: float  # the embedding part's contribution when no token is known
    text_mean_logit: float  # the embedding part's mean over the training prompts (for explanations)
    meta: dict[str, Any]


def load_model(directory: Path = DEFAULT_ARTIFACT) -> LearnedModel:
    head = json.loads((directory / "head.json").read_text(encoding="utf-8"))
    if tuple(head["structural_names"]) != STRUCTURAL_NAMES:
        raise ValueError(f"{directory}: structural features {head['structural_names']} differ from this code")
    tokens = (directory / "vocab.txt").read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    weights = array("f")
    weights.frombytes((directory / "token_weights.f32").read_bytes())
    if len(weights) != len(tokens):
        raise ValueError(f"{directory}: {len(weights)} token weights for {len(tokens)} tokens")
    return LearnedModel(
        vocab={token: i for i, token in enumerate(tokens)},
        token_weights=weights,
        bias=float(head["bias"]),
        structural_weights=tuple(float(w) for w in head["structural_weights"]),
        structural_means=tuple(float(m) for m in head["structural_means"]),
        empty_text_logit=float(head["empty_text_logit"]),
        text_mean_logit=float(head.get("text_mean_logit", 0.0)),
        meta=head.get("meta", {}),
    )


_WORD_CACHE_LIMIT = 100_000


class LearnedClassifier:
    """score() = P(local model wrong and API model right), from the artifact in `directory`.

    The artifact is read on the first score() (about 30 ms), not at construction, so building a
    router stays cheap; `load()` does it eagerly."""

    def __init__(self, directory: Path | str = DEFAULT_ARTIFACT) -> None:
        self._directory = Path(directory)
        self._model: LearnedModel | None = None
        self._lock = threading.Lock()
        self._word_cache: dict[str, tuple[float, int]] = {}
        self._default_threshold: float | None = None

    @property
    def default_threshold(self) -> float:
        """The artifact's own: the score that sent 30% of its training prompts to the API."""
        if self._default_threshold is None:
            head = json.loads((self._directory / "head.json").read_text(encoding="utf-8"))
            self._default_threshold = float(head.get("default_threshold", DEFAULT_THRESHOLD))
        return self._default_threshold

    def load(self) -> LearnedModel:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = load_model(self._directory)
        return self._model

    def _word(self, word: str, model: LearnedModel) -> tuple[float, int]:
        if len(word) > MAX_WORD_CHARS:
            return _UNKNOWN  # never in the cache: a prompt of long junk words must not fill memory
        cached = self._word_cache.get(word)
        if cached is None:
            ids = wordpiece(word, model.vocab)
            weights = model.token_weights
            cached = (sum(weights[i] for i in ids), len(ids))
            if len(self._word_cache) >= _WORD_CACHE_LIMIT:
                self._word_cache.clear()
            self._word_cache[word] = cached
        return cached

    def logit(self, features: Features) -> float:
        model = self.load()
        total = 0.0
        count = 0
        for word in pre_tokenize(features.text):
            s, n = self._word(word, model)
            total += s
            count += n
        z = model.bias + (total / count if count else model.empty_text_logit)
        for w, m, x in zip(
            model.structural_weights, model.structural_means, structural_features(features), strict=True
        ):
            z += w * (x - m)
        return z

    def explain(self, features: Features) -> list[tuple[str, float]]:
        """Each distinct word's share of the embedding term, relative to the average training prompt
        (so a common word weighs ~0), and each structural feature's term. With the bias and the
        training mean (`text_mean_logit`), they add up to the logit."""
        model = self.load()
        per_word: dict[str, tuple[float, int]] = {}
        count = 0
        for word in pre_tokenize(features.text):
            s, n = self._word(word, model)
            if n:
                total, pieces = per_word.get(word, (0.0, 0))
                per_word[word] = (total + s, pieces + n)
                count += n
        mean = model.text_mean_logit
        terms = [(f"word:{word}", (s - n * mean) / count) for word, (s, n) in per_word.items()]
        if not count:
            terms.append(("no_known_words", model.empty_text_logit - mean))
        for name, w, m, x in zip(
            STRUCTURAL_NAMES,
            model.structural_weights,
            model.structural_means,
            structural_features(features),
            strict=True,
        ):
            if w:
                terms.append((name, w * (x - m)))
        return terms

    def score(self, features: Features) -> float:
        z = self.logit(features)
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)
