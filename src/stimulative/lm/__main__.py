"""``python -m stimulative.lm {train,loafing,export}``: the LM commands (also reached through ``stimulative``).

examples:
  python -m stimulative.lm train recipes/lm_llama_st.yaml steps=300 threads=1
  python -m stimulative.lm train recipes/lm_llama_ct.yaml resume=auto
  python -m stimulative.lm loafing runs/lm_llama_ct runs/lm_llama_st --alone runs/lm_llama_d4 -o runs/lm_loafing
  python -m stimulative.lm export runs/lm_llama_st --depth 4 -o lm_st_d4
"""

from __future__ import annotations

import argparse
import json
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

    if args.command == "train":
        from .train import train_lm

        recipe, overrides = args.recipe, list(args.overrides)
        if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
            recipe, overrides = None, [recipe, *overrides]
        summary = train_lm(recipe, overrides)
        final = summary["final"]
        print(f"finished step {summary['step']}/{summary['steps']}: val loss {final.get('val_loss', float('nan')):.4f}"
              f"; run in {summary['run_dir']}", flush=True)
    elif args.command == "loafing":
        from .loafing import lm_loafing

        result = lm_loafing(args.runs, args.alone, args.out, val_blocks=args.val_blocks)
        for row in result["rows"]:
            rel = f" ({row['rel_to_alone']:+.1%} vs alone)" if "rel_to_alone" in row else ""
            print(f"{row['run']:>24} depth {row['depth']:>2}: loss {row['loss']:.4f} ppl {row['ppl']:.3f}{rel}")
        print(f"wrote {args.out}/loafing_lm.json, .csv, .png")
    else:
        from .export import export_lm

        print(json.dumps(export_lm(args.run, args.depth, args.output, evaluate=args.evaluate), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
