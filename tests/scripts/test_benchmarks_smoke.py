"""Smoke test of the benchmarks: each runs in its ``--quick`` setting and ends with a ratio line.

No timing is asserted (the figures belong in BENCHMARKS.md); only that every script runs on CPU
and that its last line parses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
RATIO = re.compile(r"^RATIO (\w+=\d+(\.\d+)? target(<=|>=)[\d.]+ (PASS|MISS) ?)+$")
BENCHES = ["overhead", "datastall", "twostage", "resnet", "inference", "scaling"]
# The figures each benchmark must report (its README line in BENCHMARKS.md names them).
EXPECTED = {
    "overhead": {"overhead"},
    "datastall": {"data_stall"},
    "twostage": {"two_stage_speedup", "embed_efficiency"},
    "resnet": {"model_throughput"},
    "inference": {"inference"},
    "scaling": {"per_slide_10x", "peak_rss_growth", "peak_anon_growth"},
}


def _parse_ratio(line: str) -> dict[str, float]:
    assert RATIO.match(line), f"last line is not a ratio line: {line!r}"
    return {m[0]: float(m[1]) for m in re.findall(r"(\w+)=(\d+(?:\.\d+)?) target", line)}


def test_ratio_line_format() -> None:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import benchlib
    finally:
        sys.path.remove(str(SCRIPTS))
    line = benchlib.ratio_line("overhead", 1.0123, 1.03, "<=")
    assert line == "RATIO overhead=1.012 target<=1.03 PASS"
    two = line + " " + benchlib.ratio_line("x", 0.5, 0.85, ">=").removeprefix("RATIO ")
    assert _parse_ratio(two) == {"overhead": 1.012, "x": 0.5}
    times = benchlib.interleave({"a": lambda: None, "b": lambda: None}, reps=3)
    assert [len(v) for v in times.values()] == [3, 3]


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory: pytest.TempPathFactory, tiny_cohort: Path) -> Path:
    """A benchmark cache dir that already holds the session's tiny cohort."""
    root = tmp_path_factory.mktemp("bench")
    shutil.copytree(tiny_cohort, root / "cohort_tiny")
    (root / "cohort_tiny" / ".bench_done").write_text("ok\n")
    return root


def _run(args: list[str], cache: Path) -> str:
    env = {**os.environ, "IMMUNOPLEX_BENCH_DIR": str(cache), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=SCRIPTS, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHES)
def test_benchmark_quick(name: str, bench_cache: Path) -> None:
    last = _run([f"bench_{name}.py", "--quick", "--cache", str(bench_cache)], bench_cache)
    ratios = _parse_ratio(last)
    assert set(ratios) == EXPECTED[name], last
    # A ratio of two timings or sizes: positive and finite; 0 or 1000x means a broken side.
    assert all(0 < v < 1000 for v in ratios.values()), last


@pytest.mark.slow
def test_bench_reader_small(bench_cache: Path) -> None:
    """The I/O helper's reader benchmark on a small slide (reader / raw limit ratios)."""
    args = ["bench_reader.py", "--size", "512", "--reps", "1", "--workdir", str(bench_cache)]
    ratios = _parse_ratio(_run(args, bench_cache))
    assert {"uncompressed_1t", "zstd_1t"} <= set(ratios) and all(v > 0 for v in ratios.values())
