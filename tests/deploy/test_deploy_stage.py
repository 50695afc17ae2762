"""Staging a function's upload folder: its checked requirements.lock shipped, shared/ without the engine."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .function_envs import REPO, load_script

stage_function = load_script("stage_function")
lock_functions = load_script("lock_functions")

PINS = stage_function.read_pins("# pins\nFlask==3.1.3\nlabelbox==7.17.0\ngoogle_auth==2.62.2  # note\n-c other.txt\n")
FAKE_CONSTRAINTS = "Flask==3.1.3\nWerkzeug==3.1.9\nclick==8.5.1\nunrelated==1.0\n"
FAKE_REQUIREMENTS = "# entry point\nflask\n"
FIX = "python scripts/lock_functions.py"


def fake_lock(requirements: str, constraints: str, names: list[str]) -> str:
    """A lock as lock_functions.py writes one, for packages that need not be installed."""
    pins = stage_function.read_pins(constraints)
    digest = stage_function.inputs_sha256(requirements, pins, names)
    body = "".join(f"{name}=={pins.get(stage_function.normalized(name), '0')}\n" for name in sorted(names))
    return f"# generated\n{stage_function.HASH_PREFIX} {digest}\n{body}"


def fake_repo(tmp_path: Path, *, lock: str | None = None) -> Path:
    root = tmp_path / "repo"
    (root / "functions" / "etl").mkdir(parents=True)
    (root / "functions" / "etl" / "main.py").write_text("def etl(request): ...\n")
    (root / "functions" / "etl" / "requirements.txt").write_text(FAKE_REQUIREMENTS)
    if lock is None:
        lock = fake_lock(FAKE_REQUIREMENTS, FAKE_CONSTRAINTS, ["flask", "werkzeug", "click"])
    if lock:
        (root / "functions" / "etl" / "requirements.lock").write_text(lock)
    (root / "shared" / "engine").mkdir(parents=True)
    (root / "shared" / "__init__.py").write_text("")
    (root / "shared" / "engine" / "model.py").write_text("import torch\n")
    (root / "shared" / "training").mkdir()
    (root / "shared" / "training" / "engine.py").write_text("# a module named engine elsewhere ships\n")
    (root / "constraints.txt").write_text(FAKE_CONSTRAINTS)
    return root


def stage_error(root: Path) -> str:
    pins = stage_function.read_pins((root / "constraints.txt").read_text())
    with pytest.raises(stage_function.StagingError) as failure:
        stage_function.stage(root, "etl", root / "build", pins)
    assert not (root / "build" / "etl").exists(), "nothing may be staged from a bad lock"
    return str(failure.value)


def test_read_pins_normalizes_names_and_ignores_everything_but_pins() -> None:
    assert PINS == {"flask": "3.1.3", "labelbox": "7.17.0", "google-auth": "2.62.2"}


def test_every_listed_name_gets_its_pin_and_extras_keep_the_base_pin() -> None:
    text = "# entry point\nflask\nlabelbox[data]\nGoogle.Auth\n\n"
    assert stage_function.pinned_requirements(text, PINS, source="r.txt") == (
        "flask==3.1.3\nlabelbox[data]==7.17.0\nGoogle.Auth==2.62.2\n"
    )


def test_unpinned_names_and_versions_outside_constraints_are_all_reported() -> None:
    with pytest.raises(stage_function.StagingError) as failure:
        stage_function.pinned_requirements("flask>=3\nnumpy\nrequests==2.0\n", PINS, source="r.txt")
    message = str(failure.value)
    assert "r.txt:1: 'flask>=3' is not a bare package name" in message
    assert "r.txt:2: 'numpy' has no pin in constraints.txt" in message
    assert "r.txt:3: 'requests==2.0' is not a bare package name" in message


def test_staging_replaces_an_old_build_ships_the_lock_and_shared_without_engine(tmp_path: Path) -> None:
    root = fake_repo(tmp_path)
    stale = root / "build" / "etl" / "stale.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "stage_function.py"), "--root", str(root), "etl"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    staged = root / "build" / "etl"
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert files == ["main.py", "requirements.txt", "shared/__init__.py", "shared/training/engine.py"]
    lock = (root / "functions" / "etl" / "requirements.lock").read_text()
    assert (staged / "requirements.txt").read_text() == lock
    assert [line for line in lock.splitlines() if not line.startswith("#")] == [
        "click==8.5.1",
        "flask==3.1.3",
        "werkzeug==3.1.9",
    ]


def test_a_missing_lock_stops_staging_naming_the_command_that_writes_it(tmp_path: Path) -> None:
    root = fake_repo(tmp_path, lock="")
    message = stage_error(root)
    assert message.startswith("functions/etl/requirements.lock does not exist: regenerate the locks with")
    assert f"`{FIX}`" in message
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "stage_function.py"), "--root", str(root), "etl"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: functions/etl/requirements.lock does not exist")


def test_a_changed_requirements_txt_makes_the_lock_stale(tmp_path: Path) -> None:
    root = fake_repo(tmp_path)
    (root / "functions" / "etl" / "requirements.txt").write_text("flask\nclick\n")
    message = stage_error(root)
    assert "functions/etl/requirements.lock is stale: functions/etl/requirements.txt or the pins" in message
    assert FIX in message


def test_a_name_missing_from_the_lock_is_named(tmp_path: Path) -> None:
    requirements = "flask\nwerkzeug\n"
    root = fake_repo(tmp_path, lock=fake_lock(requirements, FAKE_CONSTRAINTS, ["flask", "click"]))
    (root / "functions" / "etl" / "requirements.txt").write_text(requirements)
    message = stage_error(root)
    assert "functions/etl/requirements.lock lacks werkzeug, which functions/etl/requirements.txt names" in message
    assert "is stale" not in message  # the hash matches: the lock was written wrong, not left behind


def test_a_pin_in_the_lock_must_equal_constraints(tmp_path: Path) -> None:
    root = fake_repo(tmp_path)
    (root / "constraints.txt").write_text(FAKE_CONSTRAINTS.replace("click==8.5.1", "click==8.6.0"))
    message = stage_error(root)
    assert "functions/etl/requirements.lock has click==8.5.1 but constraints.txt pins click==8.6.0" in message
    assert "is stale" in message
    assert FIX in message


def test_a_hand_edited_lock_is_refused(tmp_path: Path) -> None:
    good = fake_lock(FAKE_REQUIREMENTS, FAKE_CONSTRAINTS, ["flask", "werkzeug", "click"])
    for edited, expected in (
        (good.replace("click==8.5.1\n", ""), "functions/etl/requirements.lock is stale"),
        (good + "leftpad==1.0\n", "has leftpad==1.0, which constraints.txt does not pin"),
        (good + "numpy>=2\n", "requirements.lock:6: 'numpy>=2' is not a name==version line"),
        ("\n".join(line for line in good.splitlines() if "sha256" not in line), "has no '# inputs-sha256: ...' line"),
    ):
        message = stage_error(fake_repo(tmp_path / str(len(edited)), lock=edited))
        assert expected in message, message


def test_requirement_errors_are_reported_before_the_lock_is_looked_at(tmp_path: Path) -> None:
    root = fake_repo(tmp_path, lock="")
    (root / "functions" / "etl" / "requirements.txt").write_text("flask\nleftpad-nonexistent\n")
    assert stage_error(root) == "functions/etl/requirements.txt:2: 'leftpad-nonexistent' has no pin in constraints.txt"


def test_lock_functions_follows_requested_extras_only() -> None:
    pins = stage_function.read_pins((REPO / "constraints.txt").read_text())
    plain = lock_functions.closure_of([("google-api-core", "")], source="r.txt").required_by
    grpc = lock_functions.closure_of([("google-api-core", "[grpc]")], source="r.txt").required_by
    assert "grpcio" not in plain
    assert {"grpcio", "grpcio-status"} <= set(grpc)
    text = lock_functions.lock_text("fake", "flask\n", pins)
    closure = ["blinker", "click", "flask", "itsdangerous", "jinja2", "markupsafe", "werkzeug"]
    assert [line for line in text.splitlines() if not line.startswith("#")] == [f"{n}=={pins[n]}" for n in closure]
    assert f"{stage_function.HASH_PREFIX} {stage_function.inputs_sha256('flask' + chr(10), pins, closure)}\n" in text


def test_lock_functions_refuses_unpinned_or_differently_installed_packages() -> None:
    pins = stage_function.read_pins((REPO / "constraints.txt").read_text())
    without_blinker = {name: version for name, version in pins.items() if name != "blinker"}
    with pytest.raises(lock_functions.LockError, match=r"blinker \(required by flask\) has no pin in constraints\.txt"):
        lock_functions.lock_text("fake", "flask\n", without_blinker)
    with pytest.raises(lock_functions.LockError, match=r"flask is installed at 3\.1\.3 but constraints\.txt pins 0\.1"):
        lock_functions.lock_text("fake", "flask\n", {**pins, "flask": "0.1"})


def test_lock_functions_check_names_each_stale_lock_and_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for name in ("a", "b"):
        (root / "functions" / name).mkdir(parents=True)
        (root / "functions" / name / "requirements.txt").write_text("click\n")
    shutil.copy2(REPO / "constraints.txt", root / "constraints.txt")
    script = [sys.executable, str(REPO / "scripts" / "lock_functions.py"), "--root", str(root)]
    assert subprocess.run(script, capture_output=True, text=True, check=False).returncode == 0
    assert subprocess.run([*script, "--check"], capture_output=True, text=True, check=False).returncode == 0
    (root / "functions" / "b" / "requirements.txt").write_text("click\nflask\n")
    (root / "functions" / "a" / "requirements.lock").unlink()
    done = subprocess.run([*script, "--check"], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert f"error: functions/a/requirements.lock does not exist: regenerate it with `{FIX}`" in done.stderr
    assert "error: functions/b/requirements.lock is stale (" in done.stderr
    assert "+flask==3.1.3" in done.stderr
    assert not (root / "functions" / "a" / "requirements.lock").exists(), "--check writes nothing"


def test_the_committed_locks_are_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "lock_functions.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout


def test_the_projects_own_functions_stage_with_their_locks(tmp_path: Path) -> None:
    names = sorted(p.name for p in (REPO / "functions").iterdir() if p.is_dir())
    assert names == ["etl", "inference", "model_run", "models", "monitor", "train"]
    root = tmp_path / "repo"
    root.mkdir()
    for part in ("functions", "shared"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "constraints.txt", root / "constraints.txt")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "stage_function.py"), "--root", str(root), *names],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in names:
        staged = root / "build" / name
        assert (staged / "shared" / "__init__.py").is_file()
        assert not (staged / "shared" / "engine").exists()
        assert not (staged / "requirements.lock").exists()
        text = (staged / "requirements.txt").read_text()
        assert text == (REPO / "functions" / name / "requirements.lock").read_text()
        lines = [line for line in text.splitlines() if not line.startswith("#")]
        assert lines and all("==" in line for line in lines)
        assert any(line.startswith("functions-framework==") for line in lines), name
        assert not any(line.startswith("torch==") for line in lines), name
