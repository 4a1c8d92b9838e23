"""The JSON Schemas in schemas/ match the models (regenerate with tools/export_schemas.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_schemas_are_current():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export_schemas.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
