"""Stages a Cloud Function's upload folder: its own files, the `shared/` package and pinned requirements.

Cloud Functions upload only the function's folder, so `deploy.sh` builds `build/<name>/` from
`functions/<name>/`, a copy of `shared/` (without the local engine, which needs torch and never runs in
the cloud) and a requirements.txt in which every name carries its pin from constraints.txt, the one
place pins live. A name without a pin stops the deployment here, before anything reaches the cloud.

Standard library only: it runs on the deployer's machine, not in the project's virtualenv.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

NOT_SHIPPED_FROM_SHARED = ("engine",)  # torch-based local engine: the cloud trains on Vertex AI
_REQUIREMENT = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<extras>\[[A-Za-z0-9._,\s-]+\])?")
_PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")


class StagingError(Exception):
    """The function folder cannot be staged; the message says which file and line to fix."""


def normalized(name: str) -> str:
    """PEP 503 name normalization, so `Flask`, `flask` and `google_auth` find their pins."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(constraints_text: str) -> dict[str, str]:
    """Maps each normalized name to its pinned version; anything but `name==version` is ignored."""
    pins: dict[str, str] = {}
    for raw in constraints_text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = _PIN.fullmatch(line)
        if match:
            pins[normalized(match["name"])] = match["version"]
    return pins


def pinned_requirements(requirements_text: str, pins: Mapping[str, str], *, source: str) -> str:
    """Stamps `name[extras]==version` on every listed name; refuses versions written anywhere else."""
    lines: list[str] = []
    problems: list[str] = []
    for number, raw in enumerate(requirements_text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _REQUIREMENT.fullmatch(line)
        if not match:
            problems.append(
                f"{source}:{number}: {line!r} is not a bare package name (versions live in constraints.txt only)"
            )
            continue
        version = pins.get(normalized(match["name"]))
        if version is None:
            problems.append(f"{source}:{number}: {match['name']!r} has no pin in constraints.txt")
            continue
        extras = re.sub(r"\s+", "", match["extras"] or "")
        lines.append(f"{match['name']}{extras}=={version}")
    if problems:
        raise StagingError("; ".join(problems))
    if not lines:
        raise StagingError(f"{source} names no packages")
    return "\n".join(lines) + "\n"


def _ignore_for(shared_root: Path):
    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))}
        if Path(directory) == shared_root:
            skipped.update(n for n in names if n in NOT_SHIPPED_FROM_SHARED)
        return skipped

    return ignore


def stage(root: Path, name: str, out: Path, pins: Mapping[str, str]) -> Path:
    """Builds `out/<name>/` afresh and returns it."""
    source = root / "functions" / name
    requirements = source / "requirements.txt"
    if not (source / "main.py").is_file():
        raise StagingError(f"functions/{name}/main.py does not exist")
    if not requirements.is_file():
        raise StagingError(f"functions/{name}/requirements.txt does not exist")
    pinned = pinned_requirements(requirements.read_text(), pins, source=f"functions/{name}/requirements.txt")
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    shared_root = root / "shared"
    shutil.copytree(source, target, ignore=_ignore_for(shared_root))
    shutil.copytree(shared_root, target / "shared", ignore=_ignore_for(shared_root))
    (target / "requirements.txt").write_text(pinned)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="function folders under functions/")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--out", type=Path, help="where to stage (default: ROOT/build)")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    out: Path = (args.out or root / "build").resolve()
    try:
        constraints = root / "constraints.txt"
        if not constraints.is_file():
            raise StagingError(f"{constraints} does not exist")
        pins = read_pins(constraints.read_text())
        for name in args.names:
            print(f"staged {stage(root, name, out, pins)}")
    except StagingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
