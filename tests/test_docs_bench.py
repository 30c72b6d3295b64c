"""BENCHMARKS.md's fences run as printed, by the rules of docs/testing.md (tests/test_docs.py runs
every other doc's). They need no trained runs, and a file of their own lets the suite's second worker
(`--dist loadfile`) run them beside the other docs' fences."""

from __future__ import annotations

import pytest

from tests.test_docs import BENCH_DOC, FENCES, IDS, run_fence

BENCH = [(f, i) for f, i in zip(FENCES, IDS) if f[0] == BENCH_DOC]


def test_benchmarks_has_fences():
    assert BENCH, "BENCHMARKS.md has no bash fence"


@pytest.mark.slow
@pytest.mark.parametrize(("path", "line", "lang", "source"), [f for f, _ in BENCH], ids=[i for _, i in BENCH])
def test_benchmark_fence_runs(path, line, lang, source, data_dir, tmp_path):
    run_fence(path, line, lang, source, None, data_dir, tmp_path)
