"""Generate Python code, gRPC stubs and mypy stubs from protos/.

Output goes to libs/protos/src/arbridge (ignored by git). The generated tree
is rebuilt from scratch on every run so that a removed proto leaves nothing
behind, and written atomically (a temporary folder renamed into place) so a
failed run never leaves a half-generated package.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PARENT = ROOT / "libs" / "protos" / "src"
PACKAGE = "arbridge"
# mypy-protobuf's plugins live beside this interpreter, whatever PATH says.
BIN = Path(sys.executable).parent


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    if not protos:
        print("no .proto files under protos/", file=sys.stderr)
        return 1
    well_known = str(resources.files("grpc_tools") / "_proto")
    OUT_PARENT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT_PARENT) as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        code = int(protoc.main(args))
        if code != 0:
            print(f"protoc failed with exit code {code}", file=sys.stderr)
            return code
        generated = Path(tmp) / PACKAGE
        for folder in [generated, *[d for d in generated.rglob("*") if d.is_dir()]]:
            (folder / "__init__.py").touch()
        (generated / "py.typed").touch()
        target = OUT_PARENT / PACKAGE
        if target.exists():
            shutil.rmtree(target)
        generated.rename(target)
    print(f"generated {len(protos)} proto files into {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
