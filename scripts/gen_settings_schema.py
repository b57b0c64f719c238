"""Write (or check) the Helm chart's `<daemon>.config` schema from the daemons'
settings dataclasses.

Each daemon declares its settings once (`services/<daemon>/settings.py`,
`SETTINGS`); this script puts `schema_properties(SETTINGS)` (types, minimums,
maximums, enums, defaults, descriptions with units) into
deploy/helm/agentmesh/values.schema.json under
`properties.<daemon>.properties.config.properties`, so `helm install` refuses a
wrong type or an out-of-range value before any pod starts.

Usage:
    python scripts/gen_settings_schema.py          # rewrite the schema
    python scripts/gen_settings_schema.py --check  # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "deploy/helm/agentmesh/values.schema.json"
DAEMONS = ("bus", "router", "registry", "saga", "swarm")


def generated_schema(current: dict[str, Any]) -> dict[str, Any]:
    """`current` with every daemon's `config` block generated from its settings.

    Raises:
        KeyError: the schema has no `<daemon>.config` block to fill.
    """
    sys.path[:0] = [str(ROOT), str(ROOT / "libs")]
    from agentmesh.runtime.settings import schema_properties

    out = json.loads(json.dumps(current))
    for daemon in DAEMONS:
        cls = importlib.import_module(f"agentmesh.server.{daemon}.settings").SETTINGS
        config = out["properties"][daemon]["properties"]["config"]
        config["type"] = "object"
        config["description"] = (
            f"The {daemon} daemon's own flags, as AGENTMESH_<KEY> in its ConfigMap "
            f"(`agentmesh-daemon {daemon} --help`). Generated from {cls.__name__} "
            "by scripts/gen_settings_schema.py."
        )
        config["additionalProperties"] = False
        config["properties"] = schema_properties(cls)
    return out


def render(schema: dict[str, Any]) -> str:
    """The file text: two-space JSON and a final newline, as committed."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite the schema, or with --check report whether it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args(argv)
    text = SCHEMA.read_text()
    fresh = render(generated_schema(json.loads(text)))
    if args.check:
        if fresh != text:
            print(
                f"stale {SCHEMA.relative_to(ROOT)}: the daemons' settings changed "
                "(run 'python scripts/gen_settings_schema.py')",
                file=sys.stderr,
            )
            return 1
        return 0
    SCHEMA.write_text(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
