"""Generates the Python gRPC stubs for protos/ into finetune/ (the proto package's import path).

`--check` regenerates into a temporary folder and fails when the stubs on disk differ, so CI
proves the stubs are current.
"""

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    for folder in {p.parent for p in out_dir.rglob("*_pb2.py")}:
        while folder != out_dir:
            (folder / "__init__.py").touch()
            folder = folder.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if finetune/ is stale")
    args = parser.parse_args()
    if not args.check:
        generate(ROOT)
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = sorted(p.relative_to(tmp) for p in Path(tmp).rglob("*.py*"))
        stale = [
            p for p in fresh if not (ROOT / p).exists() or not filecmp.cmp(Path(tmp) / p, ROOT / p, False)
        ]
        if stale:
            sys.exit(f"stubs out of date, run `make protos`: {', '.join(map(str, stale))}")


if __name__ == "__main__":
    main()
