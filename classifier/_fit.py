"""Logistic regression for training: L2, soft labels, weights per example and an intercept per group,
by Newton's method (deterministic and numpy-only, so a retrain reproduces the artifact byte for byte)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Head:
    mean: FloatArray
    std: FloatArray  # 0 for a constant feature, whose weight is then 0
    weights: FloatArray  # on standardised features
    bias: float  # the training-weighted mean of the group intercepts
    group_bias: FloatArray  # one intercept per group (a source family), used only while fitting

    def logits(self, x: FloatArray) -> FloatArray:
        safe = np.where(self.std > 0, self.std, 1.0)
        return np.asarray(((x - self.mean) / safe) @ self.weights + self.bias, dtype=np.float64)

    def scores(self, x: FloatArray) -> FloatArray:
        return np.asarray(1.0 / (1.0 + np.exp(-self.logits(x))), dtype=np.float64)


def fit_head(
    x: FloatArray,
    y: FloatArray,
    l2: float,
    weights: FloatArray | None = None,
    groups: IntArray | None = None,
    iterations: int = 50,
) -> Head:
    """Minimises sum_i w_i * logloss(y_i, p_i) + l2/2 |w|^2 over standardised features.

    With `groups`, each group gets its own unpenalised intercept: a family whose label rate is high
    because of how its label was made (a wide pair, a lenient margin) does not teach the weights that
    its kind of prompt is hard. Serving uses their weighted mean, a constant that ranks nothing."""
    n, d = x.shape
    sample_w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    group = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    k = int(group.max()) + 1
    mean = np.average(x, axis=0, weights=sample_w)
    std = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=sample_w))
    std = np.where(std > 1e-9, std, 0.0)
    z = (x - mean) / np.where(std > 0, std, 1.0)
    z[:, std == 0] = 0.0
    onehot = np.zeros((n, k))
    onehot[np.arange(n), group] = 1.0
    a = np.hstack([z, onehot])
    w = np.zeros(d + k)
    penalty = np.concatenate([np.full(d, l2), np.zeros(k)])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        gradient = a.T @ (sample_w * (p - y)) + penalty * w
        hessian = (a * (sample_w * p * (1 - p))[:, None]).T @ a + np.diag(penalty) + 1e-9 * np.eye(d + k)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    group_bias = w[d:]
    share = np.bincount(group, weights=sample_w, minlength=k)
    return Head(
        mean=mean,
        std=std,
        weights=w[:d],
        bias=float(group_bias @ share / share.sum()),
        group_bias=group_bias,
    )
