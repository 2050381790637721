"""Generate the Python classes of ``proto/`` into the ``lifecycle`` package (``lifecycle/v1/``).

    python -m lifecycle.protogen            # regenerate
    python -m lifecycle.protogen --check    # exit 1 when the checked-in files are stale

The proto package ``lifecycle.v1`` maps onto the Python package ``lifecycle.v1``, so generated
imports between .proto files resolve without path tricks.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc (grpcio-tools) over every .proto; returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_root}", f"--pyi_out={out_root}"]
    has_service = any(_has_service(p) for p in proto_files())
    if has_service:
        args.append(f"--grpc_python_out={out_root}")
    if protoc.main([*args, *files]) != 0:
        raise RuntimeError("protoc failed")
    outputs = []
    for proto in proto_files():
        stem = out_root / proto.relative_to(PROTO_ROOT).with_suffix("")
        outputs += [stem.with_name(stem.name + "_pb2.py"), stem.with_name(stem.name + "_pb2.pyi")]
        if has_service:
            outputs.append(stem.with_name(stem.name + "_pb2_grpc.py"))
    return outputs


def _has_service(proto: Path) -> bool:
    return any(line.lstrip().startswith("service ") for line in proto.read_text().splitlines())


def check() -> list[str]:
    """Names of generated files that differ from (or are missing in) the repo."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            rel = path.relative_to(tmp)
            mine = REPO / rel
            if not mine.exists() or not filecmp.cmp(path, mine, shallow=False):
                stale.append(str(rel))
        return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when generated files are stale")
    args = parser.parse_args()
    if args.check:
        stale = check()
        if stale:
            print("stale generated files (run `python -m lifecycle.protogen`): " + ", ".join(stale))
            return 1
        print("generated files are up to date")
        return 0
    for path in generate(REPO):
        print(path.relative_to(REPO))
    (REPO / "lifecycle" / "v1" / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
