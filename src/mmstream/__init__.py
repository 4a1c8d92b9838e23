"""mmstream: real-time ultrasound acquisition and quantitative analysis.

Public entry points: :func:`mmstream.analysis.analyze_frame` (per-frame metrics) and the
``mmstream`` command line (:mod:`mmstream.cli`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mmstream")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
