#!/usr/bin/env python3
"""Generate the Python gRPC code for proto/ into the SDK, or check that it is current.

The generated modules live once, in the SDK (clients/python/kms_client/_proto), because the
SDK must install on its own; the server imports them from there.

    python scripts/gen_proto.py           # regenerate
    python scripts/gen_proto.py --check   # exit 1 if the committed code differs from proto/
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUTPUT_ROOT = ROOT / "clients" / "python" / "kms_client" / "_proto"


def _generate(into: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        f"--grpc_python_out={into}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for grpc_module in into.rglob("*_pb2_grpc.py"):
        # protoc writes absolute imports ("from kms.v1 import kms_pb2"), which would resolve to
        # the server package; the SDK needs them relative to the generated package.
        text = grpc_module.read_text()
        text = re.sub(r"^from [\w.]+ import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
        grpc_module.write_text(text)
    for directory in [into, *(p for p in into.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").write_text("")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the generated code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        _generate(fresh)
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
        shutil.rmtree(OUTPUT_ROOT, ignore_errors=True)
        shutil.copytree(fresh, OUTPUT_ROOT)
    print(f"generated into {OUTPUT_ROOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
