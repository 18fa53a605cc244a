"""The suite's own contract: `-m "not vllm"` runs without the real vLLM."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import ROOT


def test_not_vllm_selects_no_test_that_needs_vllm() -> None:
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "not vllm",
            "--fixtures-per-test",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert "fixtures used by test_no_label_carries_a_user_string" in listing  # the listing is real
    needing = [line for line in listing.splitlines() if line.startswith(("vllm -- ", "vllm_embed -- "))]
    assert needing == []
