"""Stages a Cloud Function's upload folder: its own files, the `shared/` package and its locked requirements.

Cloud Functions upload only the function's folder, so `deploy.sh` builds `build/<name>/` from
`functions/<name>/`, a copy of `shared/` (without the local engine, which needs torch and never runs in
the cloud) and a requirements.txt that is the function's `requirements.lock`: the full dependency closure
of the names in its requirements.txt, every version from constraints.txt (the one place pins live), so
Cloud Build installs exactly the set CI tested and resolves nothing itself. `scripts/lock_functions.py`
writes the locks; this script only checks that a lock still matches requirements.txt and constraints.txt.
A name without a pin, or a missing or stale lock, stops the deployment here, before anything reaches the
cloud.

Standard library only: it runs on the deployer's machine, not in the project's virtualenv.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

NOT_SHIPPED_FROM_SHARED = ("engine",)  # torch-based local engine: the cloud trains on Vertex AI
LOCK_FILE = "requirements.lock"
LOCK_COMMAND = "python scripts/lock_functions.py"
HASH_PREFIX = "# inputs-sha256:"
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


def requirement_entries(requirements_text: str, pins: Mapping[str, str], *, source: str) -> list[tuple[str, str]]:
    """The `(name, extras)` of every listed name, as written; refuses versions and names without a pin."""
    entries: list[tuple[str, str]] = []
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
        if normalized(match["name"]) not in pins:
            problems.append(f"{source}:{number}: {match['name']!r} has no pin in constraints.txt")
            continue
        entries.append((match["name"], re.sub(r"\s+", "", match["extras"] or "")))
    if problems:
        raise StagingError("; ".join(problems))
    if not entries:
        raise StagingError(f"{source} names no packages")
    return entries


def pinned_requirements(requirements_text: str, pins: Mapping[str, str], *, source: str) -> str:
    """Stamps `name[extras]==version` on every listed name; refuses versions written anywhere else."""
    entries = requirement_entries(requirements_text, pins, source=source)
    return "".join(f"{name}{extras}=={pins[normalized(name)]}\n" for name, extras in entries)


def inputs_sha256(requirements_text: str, pins: Mapping[str, str], names: Iterable[str]) -> str:
    """What a lock was made from: the function's requirements.txt and the constraints.txt pins of its closure.

    `names` are the lock's packages; their pins enter as normalized `name==version` lines, sorted, so the
    hash changes when requirements.txt or one of those pins changes, and not for edits elsewhere in
    constraints.txt. A name without a pin enters as `name==` (and the lock is wrong anyway)."""
    digest = hashlib.sha256()
    digest.update(b"requirements.txt\n")
    digest.update("".join(line.rstrip() + "\n" for line in requirements_text.splitlines()).encode())
    digest.update(b"\0constraints.txt\n")
    for name in sorted({normalized(n) for n in names}):
        digest.update(f"{name}=={pins.get(name, '')}\n".encode())
    return digest.hexdigest()


def read_lock(lock_text: str, *, source: str) -> tuple[dict[str, str], str | None, list[str]]:
    """The lock's pins (normalized name -> version), its declared inputs hash, and lines that are not pins."""
    pins: dict[str, str] = {}
    declared: str | None = None
    problems: list[str] = []
    for number, raw in enumerate(lock_text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith(HASH_PREFIX):
            declared = stripped[len(HASH_PREFIX) :].strip()
            continue
        line = stripped.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN.fullmatch(line)
        if not match:
            problems.append(f"{source}:{number}: {line!r} is not a name==version line")
            continue
        pins[normalized(match["name"])] = match["version"]
    return pins, declared, problems


def lock_problems(lock_text: str, requirements_text: str, pins: Mapping[str, str], *, function: str) -> list[str]:
    """Why `functions/<function>/requirements.lock` cannot be shipped as it is (empty when it can)."""
    lock_source = f"functions/{function}/{LOCK_FILE}"
    requirements_source = f"functions/{function}/requirements.txt"
    locked, declared, problems = read_lock(lock_text, source=lock_source)
    if not locked:
        problems.append(f"{lock_source} pins no packages")
    for name, _extras in requirement_entries(requirements_text, pins, source=requirements_source):
        if normalized(name) not in locked:
            problems.append(f"{lock_source} lacks {name}, which {requirements_source} names")
    for name, version in sorted(locked.items()):
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{lock_source} has {name}=={version}, which constraints.txt does not pin")
        elif pin != version:
            problems.append(f"{lock_source} has {name}=={version} but constraints.txt pins {name}=={pin}")
    if declared is None:
        problems.append(f"{lock_source} has no '{HASH_PREFIX} ...' line")
    elif declared != inputs_sha256(requirements_text, pins, locked):
        problems.append(
            f"{lock_source} is stale: {requirements_source} or the pins of its packages in constraints.txt "
            "changed after it was generated"
        )
    return problems


def locked_requirements(source: Path, name: str, pins: Mapping[str, str]) -> str:
    """The function's lock, checked against its requirements.txt and constraints.txt."""
    requirements_text = (source / "requirements.txt").read_text()
    # Names with versions, or without pins, are reported as before (and first): they are what a lock is made of.
    requirement_entries(requirements_text, pins, source=f"functions/{name}/requirements.txt")
    lock = source / LOCK_FILE
    fix = f"regenerate the locks with `{LOCK_COMMAND}` (in the dev venv) and commit functions/{name}/{LOCK_FILE}"
    if not lock.is_file():
        raise StagingError(f"functions/{name}/{LOCK_FILE} does not exist: {fix}")
    lock_text = lock.read_text()
    problems = lock_problems(lock_text, requirements_text, pins, function=name)
    if problems:
        raise StagingError("; ".join(problems) + f"; {fix}")
    return lock_text


def _ignore_for(shared_root: Path, lock: Path | None = None):
    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))}
        if Path(directory) == shared_root:
            skipped.update(n for n in names if n in NOT_SHIPPED_FROM_SHARED)
        if lock is not None and Path(directory) == lock.parent:
            skipped.add(lock.name)  # shipped as requirements.txt, not beside it
        return skipped

    return ignore


def stage(root: Path, name: str, out: Path, pins: Mapping[str, str]) -> Path:
    """Builds `out/<name>/` afresh and returns it."""
    source = root / "functions" / name
    if not (source / "main.py").is_file():
        raise StagingError(f"functions/{name}/main.py does not exist")
    if not (source / "requirements.txt").is_file():
        raise StagingError(f"functions/{name}/requirements.txt does not exist")
    locked = locked_requirements(source, name, pins)
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    shared_root = root / "shared"
    shutil.copytree(source, target, ignore=_ignore_for(shared_root, source / LOCK_FILE))
    shutil.copytree(shared_root, target / "shared", ignore=_ignore_for(shared_root))
    (target / "requirements.txt").write_text(locked)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="function folders under functions/")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--out", type=Path, help="where to stage (default: ROOT/build)")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    out: Path = (args.out or root / "build").resolve()
    constraints = root / "constraints.txt"
    if not constraints.is_file():
        print(f"error: {constraints} does not exist", file=sys.stderr)
        return 1
    pins = read_pins(constraints.read_text())
    failed = False
    for name in args.names:  # every function is checked, so one run names every stale lock
        try:
            print(f"staged {stage(root, name, out, pins)}")
        except StagingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
