"""Options that several commands share, declared once: checkpoints + overrides, depth selection, ``--bn-recal``.

``check(args)`` validates the shared options of any command (``stimulative.cli`` calls it after parsing), so
each rule and its message exist once.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

__all__ = ["BN_RECAL_DEFAULT", "add_bn_recal", "add_depth_selection", "add_renamed_option", "add_run_arguments",
           "check"]

# Training images for BatchNorm re-estimation per measured (sub-)network: 2000, as the paper does before
# evaluating a sub-network. The config key of the same idea is ``bn_recal_images`` (evaluation during training).
BN_RECAL_DEFAULT = 2000


def add_bn_recal(parser: argparse.ArgumentParser, what: str = "per sub-network") -> None:
    """``--bn-recal N``: re-estimate BN statistics on N training images before measuring (0: keep the saved)."""
    parser.add_argument("--bn-recal", type=int, default=BN_RECAL_DEFAULT, metavar="N",
                        help=f"re-estimate BatchNorm statistics {what} on N training images first "
                             f"(default {BN_RECAL_DEFAULT}; 0 keeps the checkpoint's statistics)")


def add_depth_selection(parser: argparse.ArgumentParser, sample_help: str) -> None:
    """``--all | --depths D.. | --sample K`` and ``--bn-recal N`` for per-sub-network analyses."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every sub-network of the ordered space")
    which.add_argument("--depths", nargs="+", metavar="D1,D2,..", help="these depth configs, e.g. 3,3,3 1,1,1")
    which.add_argument("--sample", type=int, metavar="K", help=sample_help)
    add_bn_recal(parser)


def add_run_arguments(parser: argparse.ArgumentParser, many: bool = True) -> None:
    """The arguments every analysis command shares: checkpoints + overrides, --out, --seed, --device."""
    parser.add_argument("inputs", nargs="+", metavar="CHECKPOINT" + (" [CHECKPOINT ...]" if many else ""),
                        help="checkpoint files or run directories (best.pt, else last.pt), followed by optional "
                             "key=value overrides of their config, e.g. data.root=/data data.test_subset=1000")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/analysis for one "
                        "checkpoint, ./analysis for several)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling sub-networks and images")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


class _RenamedOption(argparse.Action):
    """An option's old spelling: stores into the new option's ``dest``, with a ``DeprecationWarning``."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warnings.warn(f"{option_string} is now {self.new}; {option_string} is read until the next release",
                      DeprecationWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def add_renamed_option(parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """Accept ``old`` (hidden from the help) as the renamed option ``new`` whose ``dest`` it fills."""
    parser.add_argument(old, dest=dest, action=_RenamedOption, new=new, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS, **kwargs)


def check(args: argparse.Namespace) -> None:
    """Validate the shared options present in ``args`` (one ``ValueError`` naming the option)."""
    if getattr(args, "bn_recal", 0) < 0:
        raise ValueError(f"--bn-recal must be >= 0, got {args.bn_recal}")
