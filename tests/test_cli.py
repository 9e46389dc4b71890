"""The two command lines' shared habits: argparse subcommands and one logging set-up."""

from __future__ import annotations

import logging

import pytest

from model_zoo.cli_logging import setup_cli_logging


def test_cli_logging_prints_bare_messages_info_to_stdout_warnings_to_stderr(capsys):
    setup_cli_logging()
    setup_cli_logging()  # idempotent: each command's main calls it, a process may run several
    logging.getLogger("training.fit").info("[1/6] cases: x.csv")
    logging.getLogger("model_zoo.predict").warning("note: 2 rows skipped")
    logging.getLogger("training.evaluation").error("error: zoo folder not found: /x")
    logging.getLogger("training.fit").debug("not shown at the CLI's level")
    captured = capsys.readouterr()
    assert captured.out == "[1/6] cases: x.csv\n"
    assert captured.err == "note: 2 rows skipped\nerror: zoo folder not found: /x\n"


def test_training_dispatches_with_argparse_subcommands(capsys):
    from training.__main__ import COMMANDS, main

    assert main([]) == 2 and "COMMAND" in capsys.readouterr().err
    assert main(["nope"]) == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in COMMANDS)
    assert set(COMMANDS) == {
        "fit",
        "report",
        "localiser",
        "throughput",
        "add-localiser",
        "add-explain",
        "add-ood",
        "evaluate",
        "pretrained",
    }


def test_a_command_gets_every_argument_after_its_name_and_logs_its_errors(capsys):
    """Options after the command (``--out``, ``--help``) are the command's own, as before."""
    from training.__main__ import main

    assert main(["pretrained", "convert", "--out", "/nonexistent", "nosuch"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("unknown source(s) nosuch; known: ") and captured.out == ""
    with pytest.raises(SystemExit) as info:  # the command's own parser answers --help, as before
        main(["pretrained", "--help"])
    assert info.value.code == 0
    assert "python -m training pretrained" in capsys.readouterr().out
