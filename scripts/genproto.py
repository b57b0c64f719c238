"""Generate Python code and .pyi stubs from protos/ into libs/.

Each area (protos/agentmesh/<area>/v1) is compiled by its own protoc run so a
broken proto in one area does not block the others while contracts evolve.
Output paths follow the proto package, so `agentmesh.bus.v1.bus_pb2` imports
`agentmesh.common.v1.common_pb2` exactly as generated: no import patching.

Usage: python scripts/genproto.py [--out DIR]   (exit 1 if any area failed)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: Path) -> int:
    """Compile every area; returns the number of areas that failed."""
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    failures = 0
    for area_dir in sorted((PROTO_ROOT / "agentmesh").glob("*/v1")):
        files = sorted(str(p.relative_to(PROTO_ROOT)) for p in area_dir.glob("*.proto"))
        if not files:
            continue
        pkg_dir = out_dir / "agentmesh" / area_dir.parent.name / "v1"
        pkg_dir.mkdir(parents=True, exist_ok=True)
        for stale in pkg_dir.glob("*_pb2*.py*"):
            stale.unlink()
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--mypy_out=quiet:{out_dir}",
            f"--mypy_grpc_out=quiet:{out_dir}",
            *files,
        ]
        if protoc.main(args) != 0:
            print(f"genproto: {area_dir.relative_to(ROOT)} failed", file=sys.stderr)
            failures += 1
        for init in (pkg_dir.parent / "__init__.py", pkg_dir / "__init__.py"):
            if not init.exists():
                init.write_text("")
    return failures


def main() -> None:
    """Parse flags and generate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "libs")
    ns = parser.parse_args()
    sys.exit(1 if generate(ns.out) else 0)


if __name__ == "__main__":
    main()
