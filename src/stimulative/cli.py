"""The ``stimulative`` command line: ``stimulative <command> ...``; ``stimulative <command> -h`` for help.

Each command lives in ``stimulative.commands.<name>`` and defines ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; options several commands share are declared once in ``stimulative.commands.options``. Expected errors (bad config key, missing file, bad depth spec, NaN loss) print one line
``stimulative <command>: error: ...`` and exit with status 2, and so does a missing optional dependency (the
``pip install "stimulative[extra]"`` line); ``--traceback`` shows the full trace instead. Under torchrun each
error is printed once, by the rank that raised it (``error: [rank 1] ...``; every rank exits with status 2; see
``train.runtime.distributed_error_line``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import warnings

from ._extras import missing_extra
from .commands.options import check

__all__ = ["main", "COMMANDS", "EXPECTED_ERRORS", "build_parser", "intermix_positionals"]

COMMANDS = ["train", "eval", "demo", "loafing", "logits", "erf", "report", "export", "pareto", "generate",
            "convert"]

# The errors reported as one clean line (no traceback): ValueError covers ConfigError, CheckpointError, DataError
# and the API's validation errors; FloatingPointError covers NonFiniteLossError.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                    FloatingPointError, TypeError)


def _command_module(name: str):
    modname = f"stimulative.commands.{name}"
    if importlib.util.find_spec(modname) is None:
        return None
    return importlib.import_module(modname)


def intermix_positionals(parser: argparse.ArgumentParser) -> None:
    """Let positionals (checkpoints, ``key=value`` overrides) come before, between or after the options.

    Plain argparse stops filling a ``nargs="+"`` positional at the first option, so in
    ``stimulative eval ckpt --depth 1,1,1 data.root=x`` the override would be an "unrecognized argument".
    Every sub-command's parser uses ``parse_known_intermixed_args`` instead (standard library). A ``key=value``
    right after an option that takes several values (``--depths``) still belongs to that option.
    """
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        # parse_known_intermixed_args calls self.parse_known_args internally: route those calls to the original
        parser.parse_known_args = original  # type: ignore[method-assign]
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = parse_known_args  # type: ignore[method-assign]

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


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
        intermix_positionals(p)
        modules[name] = mod
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():
        # renamed options, flags and recipe keys: shown to the user (Python hides DeprecationWarning by default)
        warnings.filterwarnings("default", message=".*until the next release", category=DeprecationWarning)
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    try:
        check(args)
        return int(modules[args.command].run(args) or 0)
    except (*EXPECTED_ERRORS, ModuleNotFoundError) as caught:
        # a missing optional dependency is the pip line of its extra; any other missing module is a bug: traceback
        err = missing_extra(caught) if isinstance(caught, ModuleNotFoundError) else caught
        if err is None or args.traceback:
            raise
        message: str | None = " ".join(line.strip() for line in str(err).splitlines())  # one line, always
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: once, by the rank that raised it ([rank N])
            from .train.runtime import distributed_error_line

            message = distributed_error_line(err, str(message))
        if message is not None:
            print(f"stimulative {args.command}: error: {message}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"stimulative {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
