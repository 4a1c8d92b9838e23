"""The single place where Numba compilation flags are set.

``cache=True``: compiled machine code is kept on disk (``__pycache__``, or ``NUMBA_CACHE_DIR``) so a
new process loads it in a fraction of a second instead of compiling for seconds; ``nogil=True``:
kernels release the GIL so analysis threads run in parallel; ``fastmath`` stays off (results must
match the reference twins, and no measured gain justified it); ``boundscheck`` follows Numba's
default (off; the public wrappers validate every index before calling a kernel).

Frames received over ZeroMQ are read-only arrays, which Numba types differently from writable ones:
:func:`kernel` therefore compiles, for each signature, a second variant whose input arrays
(``readonly_args``, by default the first argument) are read-only.
"""

import numba
from numba.core import sigutils

JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}


def _with_readonly(signature: str, readonly_args: tuple[int, ...]):
    sig = sigutils._parse_signature_string(signature) if isinstance(signature, str) else signature
    args = list(sig.args)
    for i in readonly_args:
        args[i] = args[i].copy(readonly=True)
    return sig.return_type(*args)


def kernel(*signatures, readonly_args: tuple[int, ...] = (0,)):
    """Decorate a private kernel with eager signatures, e.g.
    ``@kernel("void(uint8[:, ::1], int64[:, ::1])")``; each signature is also compiled with the
    arrays at ``readonly_args`` read-only."""
    sigs = []
    for s in signatures:
        sigs.append(s)
        if readonly_args:
            sigs.append(_with_readonly(s, readonly_args))
    return numba.njit(sigs, **JIT_OPTIONS)
