"""Train a network with common training (CT), ST or ST++ from a YAML recipe plus key=value overrides.

The run is written to OUT_DIR/NAME (config.yaml, metrics.jsonl/.csv, last.pt, best.pt, training.png).
Overrides use dotted keys and YAML values; unknown keys and wrong types are rejected.

examples:
  stimulative train recipes/cifar10_resnet20_stpp.yaml data.root=./cifar10 epochs=30
  stimulative train recipes/cifar10_resnet20_ct.yaml resume=auto            # continue after a crash
  stimulative train data.name=synthetic model.name=cifar_resnet_tiny epochs=2  # defaults + overrides only
  torchrun --nproc_per_node 4 -m stimulative train recipes/imagenet_resnet50_stpp_a1.yaml data.root=/data/imagenet
  stimulative train recipes/lm_llama_st.yaml                            # a language model (task: lm, docs/lm.md)
"""

from __future__ import annotations

import argparse
import os

HELP = "train CT / ST / ST++ from a recipe (YAML) with key=value overrides"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe YAML file (omit to start from the defaults)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. optim.lr=0.05 st.num_subnets=6 data.root=./cifar10")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..lm.config import is_lm_recipe
    from ..train.config import config_to_dict, load_config, read_recipe

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        recipe, overrides = None, [recipe, *overrides]  # `stimulative train key=value ...`
    if recipe is not None:
        read_recipe(recipe)  # missing, binary, empty, not a mapping: one line naming the file, before dispatching
    if is_lm_recipe(recipe):  # `task: lm`: a causal language model (stimulative.lm), on the same engine
        return _train_lm(recipe, overrides, args.print_config)
    cfg = load_config(recipe, overrides)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    from ..train import train

    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        print(f"stimulative train: writing the run to {cfg.run_dir}", flush=True)
    summary = train(cfg)
    if main:
        final = summary["final"]
        acc = final.get("test_acc")
        print(f"stimulative train: finished {summary['epochs']} epochs ({summary['step']} steps); "
              f"final test acc {acc:.2f}%, best {summary['best_acc']:.2f}%; run in {summary['run_dir']}"
              if acc is not None else f"stimulative train: finished; run in {summary['run_dir']}", flush=True)
    return 0


def _train_lm(recipe: str, overrides: list[str], print_config: bool) -> int:
    import yaml

    from ..lm.config import lm_config_to_dict, load_lm_config

    cfg = load_lm_config(recipe, overrides)
    if print_config:
        print(yaml.safe_dump(lm_config_to_dict(cfg), sort_keys=False), end="")
        return 0
    from ..lm.train import train_lm

    print(f"stimulative train: writing the run to {cfg.run_dir}", flush=True)
    summary = train_lm(cfg)
    loss = summary["final"].get("val_loss")
    print(f"stimulative train: finished step {summary['step']}/{summary['steps']}"
          + (f"; val loss {loss:.4f} (full model)" if loss is not None else "") + f"; run in {summary['run_dir']}",
          flush=True)
    return 0
