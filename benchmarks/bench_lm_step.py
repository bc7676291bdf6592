"""The cost of ST on a language model: step time / CT's step time with the sub-networks read off the main forward
(prefix exits) and with separate sub-network forwards, for 1, 3 and 7 sub-networks (issue 20, item 1).

Model and batch of the LM benchmark (``recipes/lm_llama_ct.yaml``: byte-level Llama, 8 layers, width 128, context
128, batch 16, AdamW), random token batches, fp32 CPU, one thread. One measurement = ``--steps`` optimizer steps
(forward, backward, clip, AdamW step) of one setting; the settings run interleaved (A, B, C, ..., A, B, C, ...)
``--repeats`` times and the median is taken, so a load change hits every setting alike. Aims (issue 20): <= 1.15x
CT for one exit, <= 1.3x for three. Writes ``benchmarks/results/lm/step_cost.json``.

``--recipes``: instead, the training step of each shipped LM recipe (CT, ST, ST++, LayerSkip) built as
``train_lm`` builds it (``StimulativeStep.from_config`` of the recipe's ``st`` section, ``LayerSkipStep`` at the
middle of an 8,000-step schedule), side by side; ``recipe_cost_x_ct`` is what ``bench_lm.py --time-ratios`` gives
the equal-time runs (``benchmarks/results/lm_budget/step_cost_recipes.json``).

    python benchmarks/bench_lm_step.py                     # 5 repeats x 10 steps
    python benchmarks/bench_lm_step.py --hidden-size 512   # a wider model
    python benchmarks/bench_lm_step.py --recipes --repeats 7 --steps 6 --out benchmarks/results/lm_budget/step_cost_recipes.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import load_average  # benchmarks/machine.py

import stimulative as st
from stimulative import hf as st_hf
from stimulative.core.droppath import set_drop_path
from stimulative.core.tokens import TokenLogits, next_token_targets
from stimulative.io import benchmark_record, machine_info, write_record
from stimulative.lm.config import load_lm_config
from stimulative.lm.layerskip import LayerSkipStep
from stimulative.lm.model import build_lm
from stimulative.train.optim import build_optimizer, matrix_decay_groups

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden-size", type=int, default=0, help="override model.hidden_size (0: the recipe's)")
    p.add_argument("--recipes", action="store_true", help="time the shipped recipes' steps (CT, ST, ST++, LayerSkip)")
    p.add_argument("--schedule-steps", type=int, default=8000, help="--recipes: LayerSkip's schedule length T")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lm" / "step_cost.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"model.hidden_size={args.hidden_size}", "model.intermediate_size=0"] if args.hidden_size else []
    cfg = load_lm_config(REPO / "recipes" / "lm_llama_ct.yaml", overrides)
    torch.manual_seed(0)
    model = build_lm(cfg, 257, 256)
    ed = st_hf.elastic_depth(model)
    tok = TokenLogits(model)
    exits = st_hf.prefix_exits(ed, rows=tok.select_rows)
    optimizer = build_optimizer(model, cfg, params=matrix_decay_groups(model, cfg.optim.weight_decay))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 257, (cfg.batch_size, cfg.model.context + 1), generator=g) for _ in range(4)]

    def setting(n: int, one_forward: bool):
        space = st.SampleSpace.ordered(ed.full_depths, ed.min_depths, seed=0)
        return st.StimulativeStep(ed, space, num_subnets=n, kl_norm="plain", model=tok,
                                  exits=exits if one_forward else None, seed=1)

    def recipe(name: str):
        """The step ``train_lm`` builds from ``recipes/lm_llama_<name>.yaml`` (LayerSkip at mid-schedule)."""
        rc = load_lm_config(REPO / "recipes" / f"lm_llama_{name}.yaml", overrides)
        space = st.SampleSpace.for_model(ed, rc.st.sampling, ranges=rc.st.ranges, seed=0)
        if not rc.layerskip.enabled:
            return st.StimulativeStep.from_config(rc.st, ed, space, model=tok, seed=1,
                                                  exits=exits if rc.st.prefix_exits else None)
        ls = rc.layerskip
        step = LayerSkipStep(ed, exits, args.schedule_steps, p_max=ls.p_max, e_scale=ls.e_scale,
                             rotation=ls.rotation, time_schedule=ls.time_schedule, model=tok)
        step.calls = args.schedule_steps // 2

        def layerskip(x, y):
            try:
                return step(x, y)
            finally:  # its drop rates stay on the layers: clear them, or the next setting would run with them
                set_drop_path(ed, 0.0)
        return layerskip

    if args.recipes:
        settings = {name: recipe(name) for name in ("ct", "st", "stpp", "layerskip")}
    else:
        settings = {"CT": setting(0, False)}
        for n in (1, 3, 7):
            settings[f"{n} exit{'s' if n > 1 else ''}, one forward"] = setting(n, True)
            settings[f"{n} sub-network{'s' if n > 1 else ''}, separate forwards"] = setting(n, False)

    def run(step, steps: int) -> float:
        t0 = time.perf_counter()
        for i in range(steps):
            ids = batches[i % len(batches)]
            step(ids, next_token_targets(ids))
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / steps

    model.train()
    for step in settings.values():  # warm-up: first-call allocations of every code path
        run(step, 1)
    times: dict[str, list[float]] = {name: [] for name in settings}
    for r in range(args.repeats):
        for name, step in settings.items():
            times[name].append(run(step, args.steps))
            print(f"repeat {r + 1}/{args.repeats} {name:<34} {times[name][-1] * 1000:7.1f} ms/step", flush=True)
    med = {name: statistics.median(v) for name, v in times.items()}
    ct = med["ct" if args.recipes else "CT"]
    result = {
        "benchmark": "bench_lm_step", "command": "python benchmarks/bench_lm_step.py " + " ".join(sys.argv[1:]),
        "model": {"family": cfg.model.family, "layers": cfg.model.num_hidden_layers,
                  "hidden_size": cfg.model.hidden_size, "context": cfg.model.context,
                  "batch_size": cfg.batch_size, "params": sum(p.numel() for p in model.parameters())},
        "steps_per_measurement": args.steps, "repeats": args.repeats, "threads": args.threads,
        "ms_per_step": {k: round(v * 1000, 2) for k, v in med.items()},
        "cost_x_ct": {k: round(v / ct, 3) for k, v in med.items()},
        "ms_per_step_all_repeats": {k: [round(x * 1000, 2) for x in v] for k, v in times.items()},
        **({"recipe_cost_x_ct": {k: round(v / ct, 4) for k, v in med.items()},
            "layerskip_schedule": {"total_steps": args.schedule_steps, "at_step": args.schedule_steps // 2}}
           if args.recipes else
           {"aims": {"1 exit <= 1.15x CT": med["1 exit, one forward"] / ct <= 1.15,
                     "3 exits <= 1.3x CT": med["3 exits, one forward"] / ct <= 1.3}}),
        "machine": {**machine_info(args.threads), "load_average_at_end": load_average()},
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    result = benchmark_record("bench_lm_step", result, command=result.get("command"),
                              setting="recipes" if args.recipes else "step cost")
    write_record(result, out, indent=2)
    print(f"\n{'setting':<36}{'ms/step':>9}{'x CT':>7}")
    for k, v in med.items():
        print(f"{k:<36}{v * 1000:>9.1f}{v / ct:>7.2f}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
