"""`python -m shared.local_chain`: fixed steps by default (the same result on any machine); a wall time
only when asked for, with --train-seconds or the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import load_settings
from shared.local_chain import LocalChain, engine_env, main, parse_args, training_budget

VAR = "LOCAL_ENGINE_TRAIN_SECONDS"
ENV = {
    "CHAIN_MODE": "local",
    "WEBHOOK_SECRET": "s",
    **{f"{s}_URL": f"http://127.0.0.1:9/{s}" for s in ("ETL", "TRAIN", "MONITOR", "INFERENCE")},
}


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_neither_flag_nor_environment_trains_the_default_steps(command: str) -> None:
    env = engine_env(parse_args([command]), {})
    assert env == {}
    assert training_budget(env, {}) == "500 steps (the same result on any machine)"
    local = load_settings({**ENV, **env}).local
    assert local is not None and local.engine_max_steps == 500


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_the_environment_is_kept_when_no_flag_is_given(command: str) -> None:
    env = engine_env(parse_args([command]), {VAR: "25"})
    assert env == {}  # the functions inherit the environment's own value
    assert training_budget(env, {VAR: "25"}).startswith("25 s of wall time")
    local = load_settings({**ENV, VAR: "25"}).local
    assert local is not None and (local.engine_max_steps, local.engine_train_seconds) == (None, 25.0)


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_the_flag_asks_for_wall_time_over_the_environment(command: str) -> None:
    assert engine_env(parse_args([command, "--train-seconds", "12"]), {VAR: "25"}) == {VAR: "12"}
    assert engine_env(parse_args([command, "--train-seconds", "7.5"]), {}) == {VAR: "7.5"}


def test_steps_in_the_environment_win_over_a_wall_time() -> None:
    local = load_settings({**ENV, VAR: "25", "LOCAL_ENGINE_STEPS": "40"}).local
    assert local is not None and local.engine_max_steps == 40
    assert training_budget({}, {VAR: "25", "LOCAL_ENGINE_STEPS": "40"}).startswith("40 steps")


def test_an_empty_variable_counts_as_unset() -> None:
    local = load_settings({**ENV, VAR: " "}).local
    assert local is not None and local.engine_max_steps == 500


@pytest.mark.parametrize("value", ["0", "-5", "abc", "nan", "100000"])
def test_a_budget_the_engine_would_refuse_is_refused_at_the_command_line(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["serve", "--train-seconds", value])
    assert exit_info.value.code == 2
    assert "--train-seconds" in capsys.readouterr().err


def test_serve_keeps_its_other_options() -> None:
    args = parse_args(["serve", "--data-dir", "/tmp/x", "--train-seconds", "30"])
    assert (args.command, str(args.data_dir), args.train_seconds) == ("serve", "/tmp/x", 30.0)


# -- `run`: a Labelbox model run on this machine (issue 12, 1.) -----------------------------------------------

KEY = "lb-key-from-the-shell-5c2e"


def test_the_demo_leaves_a_labelbox_key_out_and_run_passes_it_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LABELBOX_API_KEY", KEY)
    monkeypatch.setenv("LABELBOX_ENDPOINT", "http://127.0.0.1:9/graphql")
    monkeypatch.setenv("CHAIN_STORE", "gcs")  # a shell set up for something else changes neither command
    demo, run = LocalChain(tmp_path), LocalChain(tmp_path, platform="labelbox")
    assert not any(name.startswith("LABELBOX_") for name in demo.env)
    assert (demo.env["CHAIN_PLATFORM"], demo.env["CHAIN_STORE"]) == ("local", "folder")
    assert run.env["LABELBOX_API_KEY"] == KEY and run.env["LABELBOX_ENDPOINT"] == "http://127.0.0.1:9/graphql"
    ports = run.check().ports
    assert (ports.platform, ports.store, ports.backend, ports.chain) == ("labelbox", "folder", "local", "loopback")
    assert demo.check().labelbox is None


def test_run_without_an_api_key_says_so_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LABELBOX_API_KEY", raising=False)
    monkeypatch.delenv("LABELBOX_API_KEY_FILE", raising=False)
    assert main(["run", "--model-run", "cmodelrun0000000000000001", "--data-dir", str(tmp_path / "data")]) == 2
    out, err = capsys.readouterr()
    assert (
        "LABELBOX_API_KEY (or LABELBOX_API_KEY_FILE) is required but not set (needed by CHAIN_PLATFORM=labelbox)"
        in (err)
    )
    assert "set LABELBOX_API_KEY" in err and out == ""
    assert not (tmp_path / "data").exists()  # no function started, no log written


def test_run_needs_a_model_run_id(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["run"])
    assert exit_info.value.code == 2 and "--model-run" in capsys.readouterr().err
    args = parse_args(["run", "--model-run", "abc", "--train-seconds", "30"])
    assert (args.model_run, args.model_type, args.force) == ("abc", "local_detector", False)
    assert engine_env(args, {}) == {VAR: "30"}
