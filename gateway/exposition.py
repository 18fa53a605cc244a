"""The one reader of the gateway's metrics as numbers: Prometheus exposition text (what `GET /metrics`
returns, for `crossover report`, read from a URL or a file by `read_exposition`) or a live registry
(for the dashboard). Both read through `read_totals`."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, ...]


class ExpositionError(ValueError):
    """The text is not Prometheus exposition format."""


def _families(source: CollectorRegistry | str | bytes) -> Iterable[Metric]:
    if isinstance(source, bytes):
        source = source.decode()
    if isinstance(source, str):
        return text_string_to_metric_families(source)
    return source.collect()


def read_totals(
    source: CollectorRegistry | str | bytes, wanted: Mapping[str, tuple[str, tuple[str, ...]]]
) -> tuple[dict[Key, float], frozenset[str]]:
    """The samples named in `wanted` (sample name -> (short name, labels kept, in order)), summed over
    every other label, keyed by (short name, *kept label values); and the short names seen at all.
    NaN samples (a gauge never set) are skipped."""
    values: dict[Key, float] = {}
    present: set[str] = set()
    try:
        for family in _families(source):
            for sample in family.samples:
                spec = wanted.get(sample.name)
                if spec is None or math.isnan(sample.value):
                    continue
                short, labels = spec
                key = (short, *(sample.labels.get(label, "") for label in labels))
                values[key] = values.get(key, 0.0) + float(sample.value)
                present.add(short)
    except ValueError as exc:
        raise ExpositionError(f"not Prometheus exposition text: {exc}") from None
    return values, frozenset(present)


def read_exposition(source: str, timeout: float = 10.0) -> tuple[str, float]:
    """The exposition text at a URL or in a file, and when it was taken (Unix time): now for a URL,
    the file's modification time for a file (it was saved at the latest then)."""
    if source.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        request = urllib.request.Request(source, headers={"Accept": "text/plain"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body: bytes = response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ExpositionError(f"{source}: cannot read the metrics: {exc}") from None
        return body.decode("utf-8", errors="replace"), time.time()
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8"), path.stat().st_mtime
    except OSError as exc:
        raise ExpositionError(f"{source}: cannot read the metrics: {exc.strerror}") from None
