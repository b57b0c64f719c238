"""Build the compiled twins of the bus gateway's per-record loops, in place.

    python scripts/build_ext.py           # build what is missing or stale
    python scripts/build_ext.py --check   # exit 1 when a build is missing or stale

Each `.pyx` in EXTENSIONS is compiled by Cython and the C compiler into a
shared object next to it (services/bus/_<name>.cpython-*.so, ignored by
git), with the sha256 of its source compiled in (`SOURCE_SHA256`), so this
script and the gateway (services/bus/hot_path.py) tell a stale build from a
fresh one by the same mark.
Needs Cython (the `dev` extra) and a C compiler; without them the gateway
runs its pure-Python loops. `make ext` runs this; `make setup` and
`make test` do too.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (module name, source), relative to the repository root.
EXTENSIONS = [
    ("agentmesh.server.bus._deliveries", "services/bus/_deliveries.pyx"),
    ("agentmesh.server.bus._intake", "services/bus/_intake.pyx"),
]


def source_sha256(path: Path) -> str:
    """Hex sha256 of a source file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def built_path(source: Path) -> Path:
    """Where the shared object of `source` goes (beside it, this interpreter's suffix)."""
    return source.with_name(source.stem + str(sysconfig.get_config_var("EXT_SUFFIX")))


def built_sha256(name: str, source: Path) -> str:
    """The source hash compiled into the shared object of `source` (its
    SOURCE_SHA256), or "" when it is missing or cannot be loaded."""
    path = built_path(source)
    if not path.exists():
        return ""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        return ""
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError:
        return ""  # built for another interpreter, or broken
    return str(getattr(module, "SOURCE_SHA256", ""))


def is_fresh(name: str, source: Path) -> bool:
    """True when the shared object exists and was built from this source."""
    return built_sha256(name, source) == source_sha256(source)


def build(name: str, source: Path) -> None:
    """Cythonize and compile `source` as module `name`, in place.

    Raises:
        SystemExit: Cython is not installed, or compilation failed.
    """
    try:
        from Cython.Build import cythonize
    except ImportError:
        raise SystemExit("build_ext: Cython is not installed (pip install -e '.[dev]')") from None
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    digest = source_sha256(source)
    ext = Extension(name, [str(source)], extra_compile_args=["-O2"])
    modules = cythonize(
        [ext], compile_time_env={"BUILD_SOURCE_SHA256": digest}, quiet=True,
        build_dir=str(ROOT / "build" / "cython"),
    )
    dist = Distribution({"ext_modules": modules})
    cmd = build_ext(dist)
    cmd.build_temp = str(ROOT / "build" / "temp")
    cmd.build_lib = str(ROOT / "build" / "lib")
    cmd.ensure_finalized()
    cmd.run()
    out = Path(cmd.get_ext_fullpath(name))
    target = built_path(source)
    # A new file renamed over the old one: a process that has the old build
    # loaded keeps its mapping (writing into the mapped file would crash it).
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(out.read_bytes())
    os.replace(tmp, target)
    print(f"build_ext: built {target.relative_to(ROOT)}", flush=True)


def main() -> None:
    """Build what is stale, or with --check only report it (exit 1)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report; exit 1 when stale")
    a = ap.parse_args()
    stale = [(n, ROOT / s) for n, s in EXTENSIONS if not is_fresh(n, ROOT / s)]
    if a.check:
        for _, src in stale:
            print(f"build_ext: {src.relative_to(ROOT)} is not built or stale", file=sys.stderr)
        sys.exit(1 if stale else 0)
    for name, src in stale:
        build(name, src)
    if not stale:
        print("build_ext: compiled extensions are up to date", flush=True)


if __name__ == "__main__":
    main()
