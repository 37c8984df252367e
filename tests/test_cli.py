"""Every verb documents itself."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from raddiag.cli import app

VERBS = ["demo", "synth", "ingest", "verify", "train", "sweep", "evaluate", "promote", "predict"]


@pytest.mark.parametrize("verb", VERBS)
def test_help_says_what_the_verb_does(verb: str) -> None:
    result = CliRunner().invoke(app, [verb, "--help"])
    assert result.exit_code == 0, result.output
    command = app.registered_commands[[c.callback.__name__ for c in app.registered_commands].index(verb)]
    first_line = command.callback.__doc__.strip().splitlines()[0]
    assert len(first_line) > 30
    assert first_line.split()[0] in result.output


def test_no_verb_shows_help() -> None:
    result = CliRunner().invoke(app, [])
    assert "synth" in result.output and "sweep" in result.output


def test_unknown_verb_exits_2() -> None:
    assert CliRunner().invoke(app, ["fly"]).exit_code == 2
