#!/usr/bin/env python3
"""Generate the Python gRPC code for proto/ into the kms-proto distribution, or check that it is current.

The generated modules live once, in their own small distribution (proto/python, package
``kms_proto``), which both the server and the SDK depend on. protoc is told that proto/ is
``kms_proto/`` (a virtual path, ``-Ikms_proto=proto``), so the files it writes import each other
as ``kms_proto.kms.v1...``: no name collides with the server's ``kms`` package and nothing is
rewritten afterwards. The wire names (package ``kms.v1``, its services and messages) are the
.proto files' own.

    python scripts/gen_proto.py           # regenerate
    python scripts/gen_proto.py --check   # exit 1 if the committed code differs from proto/
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = "kms_proto"
DISTRIBUTION = PROTO_ROOT / "python"
OUTPUT_ROOT = DISTRIBUTION / PACKAGE
# Written by hand, not by protoc: the package's own marker files stay as they are.
HAND_WRITTEN = {"__init__.py", "py.typed"}


def _sources() -> list[str]:
    return sorted(
        f"{PACKAGE}/{path.relative_to(PROTO_ROOT)}"
        for path in PROTO_ROOT.rglob("*.proto")
        if DISTRIBUTION not in path.parents
    )


def _generate(into: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PACKAGE}={PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        f"--grpc_python_out={into}",
        *_sources(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Namespace-free packages: every directory protoc wrote into gets an empty __init__.py.
    for directory in (p for p in (into / PACKAGE).rglob("*") if p.is_dir()):
        (directory / "__init__.py").write_text("")


def _tree(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and str(p.relative_to(root)) not in HAND_WRITTEN
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the generated code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        _generate(Path(tmp))
        fresh = Path(tmp) / PACKAGE
        if check:
            ours, theirs = _tree(fresh), _tree(OUTPUT_ROOT) if OUTPUT_ROOT.exists() else set()
            stale = sorted(ours ^ theirs) + sorted(
                name for name in ours & theirs if not filecmp.cmp(fresh / name, OUTPUT_ROOT / name, shallow=False)
            )
            if stale:
                print("generated gRPC code is stale; run scripts/gen_proto.py:", *stale, sep="\n  ")
                return 1
            print("generated gRPC code is current")
            return 0
        for name in _tree(OUTPUT_ROOT) if OUTPUT_ROOT.exists() else ():
            (OUTPUT_ROOT / name).unlink()
        for name in sorted(_tree(fresh)):
            (OUTPUT_ROOT / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fresh / name, OUTPUT_ROOT / name)
        for directory in sorted((p for p in OUTPUT_ROOT.rglob("*") if p.is_dir()), reverse=True):
            if not any(directory.iterdir()):
                directory.rmdir()
    print(f"generated into {OUTPUT_ROOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
