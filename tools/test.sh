#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages the tests use as real peers, the Python
# test extras, then pytest (arguments are passed on). README's second command and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: real HDF5 tools, DICOM peers and a browser (one line each: what uses it)
DEBIAN_PACKAGES=(
    hdf5-tools        # h5dump opens files left by a killed recorder (tests/test_recording_crash.py)
    dcmtk             # storescu sends series to the DICOM SCP (tests/test_volumes_scp.py)
    chromium          # the live view in a real headless browser, driven by Playwright (tests/test_web_browser.py)
)
missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
pip install -q -e ".[test]"
exec python -m pytest "$@"
