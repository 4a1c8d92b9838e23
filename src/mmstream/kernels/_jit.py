"""The single place where Numba compilation flags are set.

``cache=True``: compiled machine code is kept on disk (``__pycache__``) so a new process loads it
in ~0.2 s instead of compiling for seconds; ``nogil=True``: kernels release the GIL so analysis
threads run in parallel; ``fastmath`` stays off (results must match the reference twins bit for bit
on integer statistics, and no measured gain justified it); ``boundscheck`` follows Numba's default
(off; the public wrappers validate every index before calling a kernel).
"""

import numba

JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}


def kernel(*signatures):
    """Decorate a private kernel: ``@kernel("void(uint8[:, ::1], ...)")`` compiles eagerly."""
    return numba.njit(list(signatures) if signatures else None, **JIT_OPTIONS)
