"""A virtualenv per staged Cloud Function, built from nothing but the staged requirements.txt, and cached.

The test suite runs in one dev venv that holds every package, so a function whose lock lacks something it
imports would pass there and fail in the cloud. These helpers give a test what Cloud Build gives the
function: `staged_function` stages it with the real scripts/stage_function.py, and `function_venv` returns
a venv where `pip install --no-deps -r requirements.txt` installed exactly the staged lock, and `pip check`
then proved the lock complete (every installed distribution's requirements are installed too).

Venvs are cached under build/function-envs/<key>/, the key being the sha256 of the interpreter (version
and path) and the staged requirement lines, so functions with the same closure share one and a later test
session reuses it. A venv is built in a temporary folder beside the cache entry, its `.complete` marker
written last, then renamed into place; a file lock per key stops two pytest processes building the same
one twice. The Cloud Functions runtime is Python 3.12, so a python3.12 is preferred where one is found.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "function-envs"
MARKER = ".complete"
PIP_TIMEOUT_S = 600

# One entry per function_venv() call in this process: cache key -> what it cost.
BUILD_TIMES: dict[str, dict[str, object]] = {}


class FunctionEnvError(Exception):
    """Staging, installing or `pip check` failed; the message carries the tool's output."""


@dataclass(frozen=True)
class Interpreter:
    path: str  # the real executable (not a pyenv shim)
    version: str  # e.g. "3.12.1"
    why: str  # how it was chosen


def _probe(candidate: str) -> Interpreter | None:
    """The interpreter behind `candidate` when it runs, is 3.12 and can make venvs; None otherwise."""
    try:
        done = subprocess.run(
            [candidate, "-c", "import sys, venv; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "PYTHONNOUSERSITE": "1"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2 or not lines[1].startswith("3.12."):
        return None  # e.g. a pyenv shim for a version that is not selected
    return Interpreter(lines[0], lines[1], f"python3.12 found at {candidate}")


@cache
def runtime_python() -> Interpreter:
    """Python 3.12 (the Cloud Functions runtime) if this machine has one, else the interpreter running the tests."""
    candidates = [shutil.which("python3.12")]
    pyenv = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(os.path.join(pyenv, "versions", "3.12*", "bin", "python3.12")), reverse=True)
    for candidate in candidates:
        if candidate and (found := _probe(candidate)):
            return found
    version = ".".join(str(part) for part in sys.version_info[:3])
    return Interpreter(sys.executable, version, "no python3.12 found: the interpreter running the tests")


def staged_function(name: str, out_dir: Path) -> Path:
    """Stages `functions/<name>` with the real scripts/stage_function.py into `out_dir/<name>` and returns it."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "stage_function.py"), "--root", str(REPO), "--out", str(out_dir), name],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise FunctionEnvError(f"staging {name} failed:\n{done.stderr}")
    return Path(out_dir) / name


def requirement_lines(requirements_text: str) -> list[str]:
    """What a venv is made of: the requirement lines without comments, in a canonical order."""
    lines = (raw.split("#", 1)[0].strip() for raw in requirements_text.splitlines())
    return sorted({line for line in lines if line})


def cache_key(requirements_text: str, python: Interpreter | None = None) -> str:
    python = python or runtime_python()
    digest = hashlib.sha256()
    digest.update(f"python {python.version} {python.path}\n".encode())
    digest.update("".join(f"{line}\n" for line in requirement_lines(requirements_text)).encode())
    return digest.hexdigest()


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(step: str, command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=PIP_TIMEOUT_S, **kwargs)
    if done.returncode != 0:
        raise FunctionEnvError(
            f"{step} failed (exit {done.returncode}): {' '.join(command)}\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
        )
    return done


def _pip(venv: Path) -> list[str]:
    """pip to drive `venv` with: the venv's own when it has one, else this interpreter's pip via --python."""
    own = venv_python(venv)
    if (venv / "bin" / "pip").exists():
        return [str(own), "-m", "pip"]
    return [sys.executable, "-m", "pip", "--python", str(own)]


def _has_pip() -> bool:
    try:
        import pip  # noqa: F401
    except ImportError:
        return False
    return True


def _retarget(built: Path, final: Path) -> None:
    """Points the absolute paths a venv writes into bin/ (shebangs, activate) and pyvenv.cfg at `final`."""
    old, new = str(built).encode(), str(final).encode()
    for path in [*(built / "bin").iterdir(), built / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1_000_000:
            continue
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, new))


def clean_env() -> dict[str, str]:
    """What pip runs in: no user site, no inherited venv or PYTHONPATH, no prompts or version check."""
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def load_script(name: str) -> ModuleType:
    """A script of scripts/ as a module (they are not a package). Registered under its name: a script
    imports another by name, and dataclasses look their module up."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cached_venv(final: Path, fill: Callable[[Path], dict[str, object]]) -> tuple[dict[str, object], bool]:
    """The venv at `final`: reused when whole, else built by `fill(venv)`, which returns what to record.

    Under a file lock per entry; built in a temporary folder beside it, its marker (the figures) written
    last, then renamed into place, so a build that died half-way is never reused. Returns the figures and
    whether they were cached."""
    with _locked(final.parent / f"{final.name}.lock"):
        marker = final / MARKER
        if marker.is_file() and venv_python(final).exists():
            return json.loads(marker.read_text()), True
        if final.exists():  # no marker: a build that died half-way
            shutil.rmtree(final)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".{final.name[:16]}-", dir=final.parent))
        try:
            built = work / "venv"
            figures = {**fill(built), "build_s": round(time.monotonic() - started, 1)}
            _retarget(built, final)
            (built / MARKER).write_text(json.dumps(figures, indent=1) + "\n")  # last: only a whole venv has it
            built.rename(final)
            return figures, False
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _fill(built: Path, requirements: Path, python: Interpreter) -> dict[str, object]:
    """Installs exactly the staged lock into a new venv at `built` and `pip check`s it."""
    started = time.monotonic()
    env = clean_env()
    # Putting pip into each venv costs ~6 s; this interpreter's pip can drive it instead (pip --python).
    # --no-compile: byte-compiling google-cloud-aiplatform's thousands of modules is most of an install's
    # time, and nothing here needs it (a boot compiles what it imports).
    with_pip = not _has_pip()
    _run("creating the venv", [python.path, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(built)])
    _run(
        "pip install --no-deps",
        [*_pip(built), "install", "--no-deps", "--no-compile", "--progress-bar", "off", "-r", str(requirements)],
        env=env,
    )
    installed = time.monotonic() - started
    checked = _run("pip check", [*_pip(built), "check"], env=env)
    return {
        "python": python.path,
        "python_version": python.version,
        "packages": len(requirement_lines(requirements.read_text())),
        "install_s": round(installed, 1),
        "pip_check": checked.stdout.strip(),
        "requirements": requirement_lines(requirements.read_text()),
    }


def function_venv(staged_dir: Path, *, cache_dir: Path = CACHE) -> Path:
    """The venv holding exactly `staged_dir/requirements.txt` (installed with --no-deps, then `pip check`)."""
    requirements = Path(staged_dir) / "requirements.txt"
    python = runtime_python()
    key = cache_key(requirements.read_text(), python)
    final = cache_dir / key
    label = f"{Path(staged_dir).name} -> {key[:12]}"
    started = time.monotonic()
    figures, cached = cached_venv(final, lambda built: _fill(built, requirements, python))
    if cached:
        figures = {**figures, "cached": True, "wait_s": round(time.monotonic() - started, 1)}
        print(
            f"function-envs: {label}: reused ({figures['packages']} packages, Python {figures['python_version']};"
            f" built earlier in {figures['build_s']} s)"
        )
    else:
        figures = {**figures, "cached": False}
        print(
            f"function-envs: {label}: built in {figures['build_s']} s (pip install {figures['install_s']} s,"
            f" {figures['packages']} packages, Python {python.version} at {python.path}; {python.why})"
        )
    BUILD_TIMES[label] = figures
    return final
