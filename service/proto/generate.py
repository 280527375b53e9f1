"""Regenerate the Python modules of every .proto file under service/proto with grpcio-tools.

    python service/proto/generate.py            # rewrite the checked-in modules
    python service/proto/generate.py --out DIR  # write them under DIR instead (to compare)

For each `a/b/c.proto` it writes `a/b/c_pb2.py`, `a/b/c_pb2.pyi` and `a/b/c_pb2_grpc.py`, plus an
empty `__init__.py` in every package directory. protoc emits absolute imports between generated
modules (`from challengectl.v1 import ingest_pb2`), which would resolve against the top level (and
`challengectl` is the CLI package); they are rewritten to package-relative imports so the modules
import as `service.proto.<package path>`, and the module name protoc gives the message classes
(their `__module__`) is set to that importable name too. The output depends only on the .proto files and the
grpcio-tools version, so a rerun with the same version is byte-identical.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PYTHON_PACKAGE = "service.proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """The .proto files under root, as paths relative to it, in a stable order."""
    return sorted(path.relative_to(root) for path in root.rglob("*.proto"))


def generated_files() -> list[Path]:
    """The module files (paths relative to the output directory) that the protos generate."""
    return sorted(proto.with_name(proto.stem + suffix) for proto in proto_files() for suffix in GENERATED_SUFFIXES)


def _module_name(relative_path: Path) -> str:
    return ".".join(relative_path.with_suffix("").parts)


def _relative_import(importer: str, target_package: str) -> str:
    """The relative package spec (e.g. `.` or `..x.v1`) that reaches target_package from module importer."""
    importer_parts = importer.split(".")[:-1]
    target_parts = target_package.split(".")
    common = 0
    while common < min(len(importer_parts), len(target_parts)) and importer_parts[common] == target_parts[common]:
        common += 1
    dots = "." * (len(importer_parts) - common + 1)
    return dots + ".".join(target_parts[common:])


def make_imports_relative(source: str, importer: str, local_modules: set[str]) -> str:
    """Rewrite `from <pkg> import <mod>` lines that name one of local_modules to relative imports."""

    def replace(match: re.Match[str]) -> str:
        package, module = match.group("package"), match.group("module")
        if f"{package}.{module}" not in local_modules:
            return match.group(0)
        return f"from {_relative_import(importer, package)} import {module}"

    return re.sub(r"^from (?P<package>[\w.]+) import (?P<module>\w+)", replace, source, flags=re.MULTILINE)


def qualify_message_module(source: str, module: str) -> str:
    """Name the message classes' module `service.proto.<module>` instead of protoc's `<module>`."""
    return source.replace(f"DESCRIPTOR, '{module}', _globals)", f"DESCRIPTOR, '{PYTHON_PACKAGE}.{module}', _globals)")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every proto under PROTO_ROOT into out_dir; return the files written (absolute)."""
    from grpc_tools import protoc  # a build-time tool: imported only when regenerating

    out_dir.mkdir(parents=True, exist_ok=True)
    protos = proto_files()
    well_known_protos = resources.files("grpc_tools") / "_proto"
    arguments = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known_protos}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_ROOT / proto) for proto in protos),
    ]
    if protoc.main(arguments) != 0:
        raise SystemExit("protoc failed; see its messages above")

    local_modules = {_module_name(path) for path in generated_files() if path.suffix == ".py"}
    written = []
    for relative in generated_files():
        path = out_dir / relative
        module = _module_name(relative)
        source = make_imports_relative(path.read_text(encoding="utf-8"), module, local_modules)
        path.write_text(qualify_message_module(source, module), encoding="utf-8")
        written.append(path)
    for proto in protos:
        for package_dir in [*proto.parents][:-1]:
            (out_dir / package_dir / "__init__.py").touch()
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=PROTO_ROOT, help="directory to write the modules into (default: next to the protos)"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out.resolve()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
