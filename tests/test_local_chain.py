"""`python -m shared.local_chain`: the training budget comes from --train-seconds, else the environment, else 90."""

from __future__ import annotations

import pytest

from shared.local_chain import engine_env, parse_args

VAR = "LOCAL_ENGINE_TRAIN_SECONDS"


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_neither_flag_nor_environment_gives_the_demo_budget(command: str) -> None:
    assert engine_env(parse_args([command]), {}) == {VAR: "90"}


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_the_environment_is_kept_when_no_flag_is_given(command: str) -> None:
    assert engine_env(parse_args([command]), {VAR: "25"}) == {VAR: "25"}


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_the_flag_wins_over_the_environment(command: str) -> None:
    assert engine_env(parse_args([command, "--train-seconds", "12"]), {VAR: "25"}) == {VAR: "12"}
    assert engine_env(parse_args([command, "--train-seconds", "7.5"]), {}) == {VAR: "7.5"}


def test_an_empty_variable_counts_as_unset() -> None:
    assert engine_env(parse_args(["serve"]), {VAR: " "}) == {VAR: "90"}


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
