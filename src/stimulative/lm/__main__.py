"""``python -m stimulative.lm {train,loafing,export}``: the LM commands (also reached through ``stimulative``).

examples:
  python -m stimulative.lm train recipes/lm_llama_st.yaml steps=300 threads=1
  python -m stimulative.lm train recipes/lm_llama_ct.yaml resume=auto
  python -m stimulative.lm loafing runs/lm_llama_ct runs/lm_llama_st --alone runs/lm_llama_d4 -o runs/lm_loafing
  python -m stimulative.lm export runs/lm_llama_st --depth 4 -o lm_st_d4
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stimulative.lm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train CT / ST / ST++ from an LM recipe with key=value overrides")
    p.add_argument("recipe", nargs="?")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p = sub.add_parser("loafing", help="validation loss of every depth inside LM runs vs depth-k trained alone")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--alone", nargs="*", default=[], metavar="RUN_DIR", help="runs with fewer layers trained alone")
    p.add_argument("-o", "--out", required=True, help="output folder for loafing_lm.{json,csv,png}")
    p.add_argument("--val-blocks", type=int, default=None)
    p = sub.add_parser("export", help="write the first k layers as a save_pretrained directory")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--depth", type=int, default=None, help="layers to keep (default: all)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--evaluate", action="store_true", help="also report the export's validation loss")
    args = parser.parse_args(argv)

    from . import cli

    if args.command == "train":
        recipe, overrides = args.recipe, list(args.overrides)
        if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
            recipe, overrides = None, [recipe, *overrides]
        return cli.train_command(recipe, overrides)
    if args.command == "loafing":
        return cli.loafing_command(args.runs, args.alone, args.out, args.val_blocks)
    return cli.export_command(args.run, args.depth, args.output, args.evaluate)


if __name__ == "__main__":
    sys.exit(main())
