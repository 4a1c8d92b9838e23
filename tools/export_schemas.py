"""Write the JSON Schemas of mmstream's public models into ``schemas/``.

    python tools/export_schemas.py          # rewrite
    python tools/export_schemas.py --check  # exit 1 when a file is missing or stale

``tests/test_schemas.py`` runs the check, so a model change without a schema update fails CI.
"""

import argparse
import json
import sys
from pathlib import Path

from mmstream.analysis import FrameAnalysis
from mmstream.config import ServiceConfig
from mmstream.messages import MESSAGE_TYPES
from mmstream.recording.layout import describe as session_layout

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
MODELS = {
    "analysis.frame_analysis.schema.json": FrameAnalysis,
    "config.schema.json": ServiceConfig,
    **{f"messages.{m.model_fields['msg_type'].default}.schema.json": m for m in MESSAGE_TYPES},
}


def render() -> dict[str, str]:
    """File name -> schema text for every exported model."""
    out = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"https://mmstream.invalid/schemas/{name}"
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    out["session-layout.json"] = json.dumps(session_layout(), indent=2, sort_keys=True) + "\n"  # HDF5 session files
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    stale = []
    for name, text in render().items():
        path = SCHEMAS / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            SCHEMAS.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("stale schemas (run python tools/export_schemas.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
