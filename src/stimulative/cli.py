"""The ``stimulative`` command line: ``stimulative <command> ...``; ``stimulative <command> -h`` for help.

Each command lives in ``stimulative.commands.<name>`` and defines ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Expected errors (bad config key, missing file, bad depth spec, NaN loss) print one line
``stimulative <command>: error: ...`` and exit with status 2; ``--traceback`` shows the full trace instead.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

__all__ = ["main", "COMMANDS"]

COMMANDS = ["train", "eval", "demo", "loafing", "logits", "erf", "report", "export", "pareto"]


def _command_module(name: str):
    modname = f"stimulative.commands.{name}"
    if importlib.util.find_spec(modname) is None:
        return None
    return importlib.import_module(modname)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="stimulative", description="Stimulative Training (ST/ST++) for residual "
                                     "networks: train, evaluate, analyse and export depth-elastic models.")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"stimulative {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = {}
    for name in COMMANDS:
        mod = _command_module(name)
        if mod is None:
            continue
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        modules[name] = mod
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    from .errors import EXPECTED_ERRORS

    try:
        return int(modules[args.command].run(args) or 0)
    except EXPECTED_ERRORS as err:
        if args.traceback:
            raise
        print(f"stimulative {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stimulative {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
