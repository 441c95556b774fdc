"""Benchmark: ``estimate`` in-process, with LiteLLM's ``cost_per_token`` as the baseline.

Run it with the project's environment (README, "Benchmarks")::

    .venv/bin/pip install -e '.[bench]'      # once: LiteLLM, the baseline
    .venv/bin/python -m tests.benchmarks.estimate

It times a Cosmic text request and a Cosmic video request through the public
``pricing.estimate``, and, in the same run, ``litellm.cost_per_token`` for the same text
usage. Each figure is the median over ``--repeats`` timed loops of ``--loops`` calls (the
machines are shared and noisy: medians, not means). The target of the foundation issue is
a median of at most 5 microseconds per estimate; the ratio column says how many times
faster than the baseline. Not part of the test suite: no timing is ever asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from pricing import default_catalogs, estimate

TEXT = {
    "catalog": "cosmic",
    "operation": "text",
    "params": {
        "prompt": "Write a product description for a coffee mug",
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 500,
    },
}
VIDEO = {
    "catalog": "cosmic",
    "operation": "video",
    "params": {
        "prompt": "A calico kitten playing with a ball of yarn in golden sunlight",
        "model": "veo-3.1-fast-generate-preview",
        "duration": 8,
        "resolution": "720p",
    },
}


def per_call_us(fn: Callable[[], object], loops: int, repeats: int) -> list[float]:
    """Microseconds per call of each of ``repeats`` timed loops (after a warm-up loop)."""
    for _ in range(loops):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter_ns() - start) / loops / 1000)
    return samples


def litellm_baseline() -> Callable[[], object] | None:
    """LiteLLM's cost_per_token for the same text usage, or None when not installed."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
    try:
        from litellm import cost_per_token
    except ImportError:
        return None
    quote = estimate(TEXT, catalogs=default_catalogs())
    prompt, completion = (
        quote.estimated_usage["input_tokens"],
        quote.estimated_usage["output_tokens"],
    )

    def call() -> object:
        return cost_per_token(
            model="claude-sonnet-4-5-20250929", prompt_tokens=prompt, completion_tokens=completion
        )

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=20_000, help="calls per timed loop")
    parser.add_argument("--repeats", type=int, default=15, help="timed loops per figure")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    catalogs = default_catalogs()
    results: dict[str, Any] = {}
    for name, request in (("estimate text", TEXT), ("estimate video", VIDEO)):

        def call(request: dict[str, Any] = request) -> object:
            return estimate(request, catalogs=catalogs)

        results[name] = statistics.median(per_call_us(call, args.loops, args.repeats))
    baseline = litellm_baseline()
    if baseline is not None:
        loops = max(1, args.loops // 20)  # ~15x slower: keep the run short
        results["litellm cost_per_token (baseline)"] = statistics.median(
            per_call_us(baseline, loops, args.repeats)
        )

    base = results.get("litellm cost_per_token (baseline)")
    if args.json:
        print(json.dumps({"median_us": results, "target_us": 5.0}, indent=2))
        return 0
    print(f"python {sys.version.split()[0]}, {args.repeats} x {args.loops} calls, median per call")
    print(f"{'what':40} {'median us':>10} {'x faster than baseline':>24}")
    for name, median in results.items():
        ratio = f"{base / median:.1f}" if base is not None and "baseline" not in name else ""
        print(f"{name:40} {median:10.2f} {ratio:>24}")
    if base is None:
        print("(install the 'bench' extra for the LiteLLM baseline: pip install -e '.[bench]')")
    print("target: estimate median <= 5.0 us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
