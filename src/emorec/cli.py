"""Shared plumbing for the stage scripts: argument parsing, params loading and clean failure."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from emorec.config import Params, load_params
from emorec.errors import EmorecError

log = logging.getLogger("emorec")


class Interrupted(EmorecError):
    """A stage stopped on a signal after saving what it could; the message says how to go on.

    The exit status is the shell's convention for death by signal (128 + number), so DVC and
    scripts see a failed stage, while the user reads one line instead of a traceback.
    """

    def __init__(self, signum: int, message: str):
        self.exit_code = 128 + signum
        super().__init__(message)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
    """The docstring's layout kept as written, and every option's default shown."""


class ScriptParser(argparse.ArgumentParser):
    """A script's parser: ``--help`` is the module docstring (what it does, what it writes, how
    long it takes); a wrong argument is one line naming it, not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def script_parser(doc: str | None) -> ScriptParser:
    """:class:`ScriptParser` whose description and epilog are the docstring ``doc``."""
    lines = (doc or "").strip().splitlines()
    return ScriptParser(description=lines[0] if lines else None,
                        epilog="\n".join(lines[1:]).strip() or None,
                        formatter_class=_HelpFormatter)


def stage_parser(description: str) -> argparse.ArgumentParser:
    """A :func:`script_parser` with the options every stage shares (``--params``)."""
    parser = script_parser(description)
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="parameter file to read"
    )
    return parser


def run_stage(main: Callable[[Params, argparse.Namespace], None], parser: argparse.ArgumentParser,
              argv: list[str] | None = None) -> int:
    """Parse arguments, load params and run ``main``.

    Problems with input or configuration (:class:`EmorecError`) end the stage with a one-line
    message and exit status 2, so a user reads what was wrong instead of a traceback. A stage
    stopped by a signal (:class:`Interrupted`, or Ctrl-C anywhere else) also ends with one line
    and status 128 + signal.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        main(params, args)
    except Interrupted as err:
        print(f"stopped: {err}", file=sys.stderr)
        return err.exit_code
    except EmorecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped: interrupted (SIGINT); run it again (`dvc repro`) to finish the stage",
              file=sys.stderr)
        return 128 + signal.SIGINT
    return 0
