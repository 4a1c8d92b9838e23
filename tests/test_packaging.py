"""The installed (non-editable) package holds every subpackage and data file the code uses."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src").rglob("__init__.py")}
    found |= {".".join(("mmstream_drivers", *p.parent.relative_to(ROOT / "drivers").parts))
              for p in (ROOT / "drivers").rglob("__init__.py")}  # fmt: skip
    assert found == listed, f"pyproject packages: missing {sorted(found - listed)}, extra {sorted(listed - found)}"


def test_package_data_globs_match_files():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mmstream"]
    for pattern in data:
        assert list((ROOT / "src" / "mmstream").glob(pattern)), f"package-data {pattern!r} matches nothing"
