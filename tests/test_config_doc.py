"""docs/configuration.md stays the configuration's reference: its TOML block loads, names every
key of ServiceConfig, and gives each key the code's default."""

import re
import tomllib
from pathlib import Path

from pydantic import BaseModel

from mmstream.config import ServiceConfig, SourceSection, StreamSection, load_config
from mmstream.messages import ClinicalContext

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
EXAMPLES = {"streams", "sources"}  # example entries, not defaults


def _block() -> str:
    (block,) = re.findall(r"^```toml\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)
    return block


def _keys(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """Dotted key path -> default, for every field (nested sections recursed)."""
    out = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_keys(ann, f"{prefix}{name}."))
        else:
            out[prefix + name] = field.get_default(call_default_factory=True)
    return out


def _documented(block: str) -> dict[str, str]:
    """Dotted key path -> 'set' or 'commented', from the block's table headers and key lines."""
    table, out = "", {}
    for line in block.splitlines():
        if m := re.match(r"^\[\[?([\w.]+)\]\]?", line):
            table = m.group(1) + "."
        elif m := re.match(r"^(#\s*)?(\w+) = ", line):
            out[table + m.group(2)] = "commented" if m.group(1) else "set"
    return out


def test_the_reference_block_loads(tmp_path):
    path = tmp_path / "service.toml"
    path.write_text(_block())
    cfg = load_config(path)
    assert cfg.streams["probe0"].clinical.site == "tibialis_anterior" and cfg.sources[0].driver == "sim"


def test_every_key_is_documented_with_its_default():
    data = tomllib.loads(_block())
    documented = _documented(_block())
    expected = {k: v for k, v in _keys(ServiceConfig).items() if k.split(".")[0] not in EXAMPLES}
    for sub, model in (("streams.probe0.", StreamSection), ("streams.probe0.clinical.", ClinicalContext),
                       ("sources.", SourceSection)):  # fmt: skip
        expected.update({sub + k: None for k in model.model_fields if k not in ("clinical", "options")})  # tables
    missing = sorted(set(expected) - set(documented))
    assert not missing, f"keys missing from docs/configuration.md: {missing}"
    unknown = sorted(set(documented) - set(expected) - {"sources.options.seed"})
    assert not unknown, f"docs/configuration.md names keys the code does not have: {unknown}"
    for key, default in expected.items():
        if key.split(".")[0] in EXAMPLES:
            continue
        if default is None:
            assert documented[key] == "commented", f"{key} has no default: show it commented out"
            continue
        value = data
        for part in key.split("."):
            value = value[part]
        if isinstance(default, tuple):
            value = tuple(value)
        assert value == (str(default) if isinstance(default, Path) else default), key
