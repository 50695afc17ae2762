"""A clean virtualenv holding the engine package and nothing but its declared requirements, cached.

The requirements (the wheel's `Requires-Dist`, resolved by pip with constraints.txt, then `pip check`)
go once into build/engine-envs/<key>/, the key being the sha256 of the interpreter and those lines and
constraints.txt: installing torch takes minutes, so a later session reuses it. Each `engine_venv` call
then makes a fresh venv (a second or two), points it at that cached site-packages with a `.pth` file,
and installs the wheel just built into it with `--no-deps`, so the code under test is always the
current one and the venv still holds only the wheel and what it declares (`pip check` proves the
declared set complete). Built the way tests/deploy/function_envs.py builds a function's venv: in a
temporary folder beside the cache entry, a `.complete` marker last, renamed into place, one file
lock per key.

The interpreter is the one running the tests (3.11 here): torch==2.13.0's CPU wheel on this machine is
for it, and the package's Requires-Python admits it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import zipfile
from email.parser import Parser
from pathlib import Path

from .function_envs import REPO, FunctionEnvError, _has_pip, _pip, _run, cached_venv, clean_env

CACHE = REPO / "build" / "engine-envs"
CONSTRAINTS = REPO / "constraints.txt"
BUILD_TIMES: dict[str, dict[str, object]] = {}


def build_wheel(out_dir: Path) -> Path:
    """Runs scripts/build_engine_package.py, as deploy.sh will, and returns the wheel it wrote."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_engine_package.py"), "--out", str(out_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise FunctionEnvError(f"building the engine package failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines, as pip reads them."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(name).decode())
    return sorted(metadata.get_all("Requires-Dist") or [])


def _new_venv(path: Path) -> None:
    _run("creating the venv", [sys.executable, "-m", "venv", *(["--without-pip"] if _has_pip() else []), str(path)])


def site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python*/site-packages")
    return found


def _requirements_key(requirements: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"python {'.'.join(map(str, sys.version_info[:3]))} {sys._base_executable}\n".encode())
    digest.update("".join(f"{line}\n" for line in requirements).encode())
    digest.update(b"\0constraints.txt\n" + CONSTRAINTS.read_bytes())
    return digest.hexdigest()


def _fill(built: Path, requirements: list[str]) -> dict[str, object]:
    """Resolves and installs `requirements` (with constraints.txt) into a new venv at `built`."""
    started = time.monotonic()
    _new_venv(built)
    listed = built.parent / "requirements.txt"
    listed.write_text("".join(f"{line}\n" for line in requirements))
    # --no-compile: byte-compiling torch is most of an install's time; imports compile what they use
    install = ["install", "--no-compile", "--progress-bar", "off", "-c", str(CONSTRAINTS), "-r", str(listed)]
    _run("pip install", [*_pip(built), *install], env=clean_env())
    installed = time.monotonic() - started
    frozen = _run("pip freeze", [*_pip(built), "freeze", "--all"], env=clean_env()).stdout.split()
    return {"requirements": requirements, "installed": frozen, "install_s": round(installed, 1)}


def requirements_env(requirements: list[str], *, cache_dir: Path = CACHE) -> Path:
    """The cached venv holding exactly `requirements` and what they need (built on first use)."""
    key = _requirements_key(requirements)
    final = cache_dir / key
    label = f"engine requirements -> {key[:12]}"
    figures, cached = cached_venv(final, lambda built: _fill(built, requirements))
    figures = {**figures, "cached": cached}
    if cached:
        print(f"engine-envs: {label}: reused (built earlier in {figures['build_s']} s)")
    else:
        print(f"engine-envs: {label}: built in {figures['build_s']} s (pip install {figures['install_s']} s)")
    BUILD_TIMES[label] = figures
    return final


def engine_venv(wheel: Path, venv: Path) -> Path:
    """A fresh venv at `venv`: the wheel, over the cached venv of its declared requirements; `pip check`ed."""
    deps = requirements_env(wheel_requirements(wheel))
    _new_venv(venv)
    (site_packages(venv) / "engine-requirements.pth").write_text(f"{site_packages(deps)}\n")
    _run("pip install the wheel", [*_pip(venv), "install", "--no-deps", "--no-compile", str(wheel)], env=clean_env())
    checked = _run("pip check", [*_pip(venv), "check"], env=clean_env())
    if "No broken requirements" not in checked.stdout:
        raise FunctionEnvError(f"pip check: {checked.stdout}")
    return venv
