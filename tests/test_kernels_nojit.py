"""The kernel test files again with ``NUMBA_DISABLE_JIT=1``: the kernels' Python bodies run, so
coverage tools see them and any divergence between compiled and interpreted semantics shows."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
KERNEL_TESTS = sorted(str(p) for p in TESTS.glob("test_kernels_*.py") if p.name != Path(__file__).name)


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="already running without JIT")
def test_kernel_suite_passes_without_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", MMSTREAM_NOJIT_RUN="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not jit_only", *KERNEL_TESTS],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=900,
    )
    tail = "\n".join(proc.stdout.splitlines()[-30:])
    assert proc.returncode == 0, f"kernel tests failed without JIT:\n{tail}\n{proc.stderr[-2000:]}"
    assert " passed" in tail
