"""Language models: CT vs ST (vs ST++) on a byte-level Llama, loafing by depth, and early exit in use.

Trains with the shipped recipes ``recipes/lm_llama_{ct,st,stpp}.yaml`` (8 layers, width 128, context 128, the
Python standard library's sources as the corpus, 1,000 steps of 16 x 128 tokens; same seed, data and schedule,
only the ``st`` section differs) and a depth-4 model trained alone (the CT recipe with
``model.num_hidden_layers=4``), all at equal steps; with ``--equal-time`` also CT (and LayerSkip, when it is one
of ``--methods``) for the training time of ``--equal-time-of`` (default ST): steps = that run's training time /
the method's own training time per step at equal steps, or with ``--time-ratios`` the ratio of step times
measured side by side (``bench_lm_step.py --recipes``: robust to the load of a shared machine; a method within
3% of the reference gets no separate run, equal steps being equal time). Every
run goes through ``stimulative train`` (one thread per process, at most ``--jobs`` processes at a
time, ``resume=auto``). Then:

* loafing by depth (``stimulative.lm.loafing.lm_loafing``): validation loss/perplexity of every depth 1..8
  inside CT, ST (and ST++), next to the depth-4 model trained alone, on the same 256 validation blocks
  (``loafing_lm.{json,csv,png}``);
* self-speculative decoding on CPU (``benchmarks/lm_decode.py``: ``decode_benchmark``): the CT and the ST model (and
  ST++), the same prompts (evenly spaced over the validation split), greedy: plain tokens/s, and with
  ``generate(..., assistant_early_exit=k)`` tokens/s, drafted/accepted tokens and the acceptance rate (the modes
  interleaved per prompt, 3 passes, speed-up = median time ratio, so a load change hits all modes alike); every
  output must equal plain greedy (the benchmark fails otherwise, after writing its records).

Every finished step writes its record at once to ``benchmarks/results/lm/``: ``<run>.json`` per training run
(setting, method, seed, steps, val_loss, per-depth losses, wall_s, exact command), ``loafing_lm.*``,
``decode_<run>.json``; a rerun skips what is finished, so an interrupted invocation loses at most the runs in
flight (and those resume from their last checkpoint). ``benchmarks/report.py lm`` turns the files into the
tables of docs/lm.md.

    nohup python benchmarks/bench_lm.py > benchmarks/work/lm/bench_lm.log 2>&1 &
    python benchmarks/bench_lm.py --equal-time          # later: adds CT at ST's training time
    python benchmarks/bench_lm.py --quick --results /tmp/lm_quick --work /tmp/lm_quick_runs   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from lm_decode import decode_benchmark, prompts_from_tokens  # benchmarks/lm_decode.py
from machine import load_average, trained_at  # benchmarks/machine.py

from stimulative.io import benchmark_record, machine_info, write_record

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"ct": "recipes/lm_llama_ct.yaml", "st": "recipes/lm_llama_st.yaml", "stpp": "recipes/lm_llama_stpp.yaml",
           "layerskip": "recipes/lm_llama_layerskip.yaml"}
METHODS = {"ct": "CT", "st": "ST", "stpp": "ST++", "layerskip": "LayerSkip"}
QUICK = ["steps=20", "eval_every=10", "batch_size=4", "model.hidden_size=32", "model.intermediate_size=64",
         "model.num_attention_heads=2", "model.num_key_value_heads=2", "model.context=32", "data.val_blocks=16",
         "optim.warmup_steps=2", "log_every=10"]


def stamp() -> str:
    return time.strftime("%H:%M:%S")


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def plan(args: argparse.Namespace) -> dict[str, dict]:
    """The training runs: key -> recipe, overrides, method, setting, dependencies."""
    runs = {}
    for m in args.methods:
        runs[m] = {"recipe": RECIPES[m], "extra": [], "method": METHODS[m], "setting": "equal_steps", "after": []}
    runs["d4_alone"] = {"recipe": RECIPES["ct"], "extra": [f"model.num_hidden_layers={args.alone_depth}"],
                        "method": "CT", "setting": f"depth-{args.alone_depth} alone, equal_steps", "after": []}
    if args.equal_time:  # CT, and LayerSkip if run, given the reference's time
        ref = args.equal_time_of
        for base in ("ct", "layerskip"):
            if base == ref or (base != "ct" and base not in args.methods):
                continue
            ratio = time_ratio(args, base)
            if ratio is not None and abs(ratio - 1) < EQUAL_TIME_TOLERANCE:
                print(f"[{stamp()}] {METHODS[ref]}'s step costs {ratio:.3f}x {METHODS[base]}'s ({args.time_ratios}): "
                      "equal steps is equal time, no separate run", flush=True)
                continue
            # with measured ratios the steps are known at once; else they come from the two runs' own times
            after = [] if ratio is not None else [base, ref]
            missing = [d for d in after if d not in runs]
            if missing:
                raise SystemExit(f"--equal-time: {base}_time needs the run(s) {', '.join(missing)} (add them to "
                                 "--methods, or give --time-ratios)")
            runs[f"{base}_time"] = {"recipe": RECIPES[base], "extra": [], "method": METHODS[base], "base": base,
                                    "setting": f"equal_time ({METHODS[ref]}'s)", "after": after, "time_ratio": ratio}
    # longest first: ST++/ST start at once, CT and the shallow model share the other slot
    order = ["stpp", "st", "layerskip", "ct", "d4_alone", "ct_time", "layerskip_time"]
    return {k: runs[k] for k in order if k in runs}


EQUAL_TIME_TOLERANCE = 0.03  # a peer whose step costs within 3% of the reference's needs no equal-time run


def time_ratio(args: argparse.Namespace, base: str) -> float | None:
    """The reference's step time / ``base``'s, from ``--time-ratios`` (``recipe_cost_x_ct`` of
    ``bench_lm_step.py --recipes``); None without it."""
    if not args.time_ratios:
        return None
    cost = json.loads(Path(args.time_ratios).read_text())["recipe_cost_x_ct"]
    return cost[args.equal_time_of] / cost[base]


def command(key: str, spec: dict, args: argparse.Namespace, results: Path) -> list[str]:
    extra = list(spec["extra"])
    if key.endswith("_time"):  # steps = the reference's training time / the method's own time per step
        ratio = spec["time_ratio"]
        if ratio is not None:  # from step times measured side by side (bench_lm_step.py --recipes)
            extra.append(f"steps={max(1, round(args.steps * ratio))}")
        else:  # from the two runs' own training times
            ref, own = (json.loads((results / f"{k}.json").read_text()) for k in (args.equal_time_of, spec["base"]))
            extra.append(f"steps={max(1, round(ref['train_time_s'] / (own['train_time_s'] / own['steps'])))}")
    elif args.steps:
        extra.append(f"steps={args.steps}")
    if args.chunk_steps:  # this invocation trains at most chunk_steps more steps (resume=auto continues)
        done = _steps_done(Path(args.work) / f"{args.prefix}{key}")
        extra.append(f"max_steps={done + args.chunk_steps}")
    return [sys.executable, "-m", "stimulative", "train", spec["recipe"], f"name={args.prefix}{key}",
            f"out_dir={args.work}", f"threads={args.threads}", "device=cpu", "resume=auto", f"seed={args.seed}",
            *(QUICK if args.quick else []), *args.set, *extra]


def _steps_done(run_dir: Path) -> int:
    try:
        history = read_metrics(run_dir)
    except FileNotFoundError:
        return 0
    return int(history[-1]["step"]) if history else 0


def _finished(run_dir: Path) -> bool:
    """The run reached its last step (not a ``max_steps`` pause): its checkpoint's step equals its steps."""
    from stimulative.train.checkpoint import load_checkpoint

    if not (run_dir / "last.pt").exists():
        return False
    ckpt = load_checkpoint(run_dir / "last.pt")
    return int(ckpt["step"]) >= int(ckpt["steps"])


def run_record(key: str, spec: dict, cmd: list[str], run_dir: Path, seconds: float, args,
               load_at_start: list[float] | None = None) -> dict:
    history = read_metrics(run_dir)
    final = history[-1]
    return {"kind": "train", "run": key, "method": spec["method"], "setting": spec["setting"], "seed": args.seed,
            "steps": final["step"], "layers": args.alone_depth if key == "d4_alone" else None,
            "val_loss": final["val_loss"], "val_ppl": final["val_ppl"],
            **{k: v for k, v in final.items() if k.startswith(("val_loss_d", "val_ppl_d"))},
            "train_loss_main": final["train_loss_main"], "train_time_s": final["train_time_s"],
            "wall_s": final["wall_s"], "invocation_wall_s": seconds, "tokens_per_s": final["tokens_per_s"],
            "val_tokens": final["val_tokens"], "run_dir": str(run_dir), "recipe": spec["recipe"],
            **({"time_ratio": spec["time_ratio"], "time_ratios": args.time_ratios} if "base" in spec else {}),
            "command": shlex.join(["python" if c == sys.executable else c for c in cmd]), "history": history,
            "trained_at": trained_at(run_dir / "last.pt"),
            "machine": {**machine_info(args.threads), "load_average_at_start": load_at_start},
            "load_average_at_end": load_average()}


def train_all(args: argparse.Namespace, results: Path) -> None:
    runs = plan(args)
    pending = [k for k in runs if not (results / f"{k}.json").exists()]
    for k in runs:
        if k not in pending:
            print(f"[{stamp()}] {k}: finished earlier ({results / f'{k}.json'})", flush=True)
    running: dict[str, tuple[subprocess.Popen, list[str], float, list[float] | None]] = {}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), TQDM_DISABLE="1")
    failed, paused = [], []
    while pending or running:
        for key in list(pending):
            if len(running) >= args.jobs:
                break
            if any(not (results / f"{d}.json").exists() for d in runs[key]["after"]):
                if any(d in failed or d in paused for d in runs[key]["after"]):
                    pending.remove(key)
                continue
            pending.remove(key)
            cmd = command(key, runs[key], args, results)
            log = Path(args.work) / f"{args.prefix}{key}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{stamp()}] start {key}: {shlex.join(cmd)} (log {log})", flush=True)
            running[key] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT),
                            cmd, time.perf_counter(), load_average())
        time.sleep(1 if args.quick else 5)
        for key, (proc, cmd, t0, load0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            if proc.returncode != 0:
                failed.append(key)
                print(f"[{stamp()}] {key} FAILED (rc {proc.returncode}); see {args.work}/{args.prefix}{key}.log",
                      flush=True)
                continue
            if not _finished(Path(args.work) / f"{args.prefix}{key}"):
                paused.append(key)
                print(f"[{stamp()}] {key} paused at step {_steps_done(Path(args.work) / f'{args.prefix}{key}')} "
                      "(--chunk-steps); run the same command again to continue", flush=True)
                continue
            record = run_record(key, runs[key], cmd, Path(args.work) / f"{args.prefix}{key}", time.perf_counter() - t0,
                                args, load0)
            write_record(benchmark_record("bench_lm", record, command=record["command"], method=key), results / f"{key}.json")
            print(f"[{stamp()}] done {key}: val loss {record['val_loss']:.4f}, train {record['train_time_s']:.0f}s "
                  f"-> {results / f'{key}.json'}", flush=True)
    if failed:
        raise SystemExit(f"training runs failed: {', '.join(failed)}")
    if paused:
        raise SystemExit(f"paused (not finished): {', '.join(paused)}; run the same command again to continue")


def loafing(args: argparse.Namespace, results: Path) -> None:
    import torch

    from stimulative.lm.loafing import lm_loafing

    torch.set_num_threads(args.threads)
    ref = METHODS[args.equal_time_of]
    labels = {"ct": "CT", "st": "ST", "stpp": "ST++", "layerskip": "LayerSkip", "ct_time": f"CT ({ref}'s time)",
              "layerskip_time": f"LayerSkip ({ref}'s time)"}
    runs = {labels[k]: json.loads((results / f"{k}.json").read_text())["run_dir"]
            for k in labels if (results / f"{k}.json").exists()}
    alone = [json.loads((results / "d4_alone.json").read_text())["run_dir"]]
    out = results / "loafing_lm.json"
    if out.exists():
        old = json.loads(out.read_text())
        if {r["path"] for r in old["rows"]} == set(runs.values()) and \
                {r["path"] for r in old["alone"].values()} == set(alone):
            print(f"[{stamp()}] loafing: finished earlier ({out})", flush=True)
            return
    t0 = time.perf_counter()
    result = lm_loafing(runs, alone, results, device="cpu")
    print(f"[{stamp()}] loafing done in {time.perf_counter() - t0:.0f}s -> {out}", flush=True)
    for r in result["rows"]:
        rel = f" ({r['rel_to_alone']:+.2%} vs alone)" if "rel_to_alone" in r else ""
        print(f"  {r['run']:>16} depth {r['depth']}: {r['loss']:.4f}{rel}", flush=True)


def decode(args: argparse.Namespace, results: Path) -> None:
    import torch

    from stimulative.lm.data import load_lm_data
    from stimulative.runs import _load

    torch.set_num_threads(args.threads)
    unequal = []
    for key in ("ct", "st", "stpp", "layerskip", "ct_time", "layerskip_time"):
        src, out = results / f"{key}.json", results / f"decode_{key}.json"
        if not src.exists():
            continue
        if out.exists():
            print(f"[{stamp()}] decode {key}: finished earlier ({out})", flush=True)
            unequal += [key] if not all(v["equal_greedy"] for k, v in json.loads(out.read_text()).items()
                                        if k.startswith("exit_")) else []
            continue
        lm = _load(json.loads(src.read_text())["run_dir"])
        val = load_lm_data(lm.config, train=False).val
        prompts = prompts_from_tokens(val, args.prompts, args.prompt_tokens)
        t0 = time.perf_counter()
        result = decode_benchmark(lm.model, prompts, exits=args.exits, max_new_tokens=args.new_tokens,
                                  repeats=args.repeats)
        record = {"kind": "decode", "run": key, "method": METHODS[key.removesuffix("_time")], "source": str(src), **result,
                  "wall_s": time.perf_counter() - t0, "command": shlex.join(["python", *sys.argv]),
                  "machine": machine_info(args.threads), "load_average_at_end": load_average()}
        write_record(benchmark_record("bench_lm", record, command=record["command"], setting="decode"), out)
        line = " | ".join(f"exit {v['exit']}: {v['tokens_per_s']:.1f} tok/s, acceptance {v['acceptance']:.1%}, "
                          f"equal {v['equal_greedy']}" for k, v in result.items() if k.startswith("exit_"))
        print(f"[{stamp()}] decode {key}: greedy {result['greedy']['tokens_per_s']:.1f} tok/s | {line} -> {out}",
              flush=True)
        if not all(v["equal_greedy"] for k, v in result.items() if k.startswith("exit_")):
            unequal.append(key)
    if unequal:
        raise SystemExit(f"speculative decoding differed from plain greedy for: {', '.join(unequal)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["ct", "st"], choices=list(RECIPES))
    p.add_argument("--equal-time", action="store_true", help="also CT trained for the training time of "
                   "--equal-time-of")
    p.add_argument("--equal-time-of", default="st", choices=list(RECIPES), help="reference of --equal-time")
    p.add_argument("--time-ratios", metavar="JSON", help="equal time from the step costs measured side by side "
                   "(bench_lm_step.py --recipes) instead of the runs' own training times")
    p.add_argument("--chunk-steps", type=int, default=0, help="train each run at most this many more steps per "
                   "invocation (resumable long budgets; 0 = to the end)")
    p.add_argument("--alone-depth", type=int, default=4)
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (default: the recipes')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=96, help="prompt + new tokens within the trained context")
    p.add_argument("--exits", type=int, nargs="+", default=[2, 4])
    p.add_argument("--repeats", type=int, default=3, help="decoding passes per prompt and mode (interleaved)")
    p.add_argument("--results", default=str(REPO / "benchmarks/results/lm"))
    p.add_argument("--work", default=str(REPO / "benchmarks/work/lm"), help="run directories (not in git)")
    p.add_argument("--prefix", default="lm_", help="run directory name prefix")
    p.add_argument("--quick", action="store_true", help="tiny models and few steps (smoke test; use other dirs)")
    p.add_argument("--skip-decode", action="store_true")
    args = p.parse_args()
    if args.time_ratios and not args.steps:
        p.error("--time-ratios needs --steps (the equal-time runs get --steps x the step-cost ratio)")
    if args.time_ratios:
        try:
            cost = json.loads(Path(args.time_ratios).read_text())["recipe_cost_x_ct"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            p.error(f"--time-ratios {args.time_ratios}: not a step-cost file of bench_lm_step.py --recipes ({e!r})")
        missing = [m for m in ("ct", args.equal_time_of, *args.methods) if m not in cost]
        if missing:
            p.error(f"--time-ratios {args.time_ratios} has no step cost for {', '.join(missing)}")
    if args.quick:
        args.prompts, args.prompt_tokens, args.new_tokens, args.repeats = 2, 16, 16, 1
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[{stamp()}] bench_lm: {shlex.join(sys.argv)}; load {load_average()}", flush=True)
    train_all(args, results)
    loafing(args, results)
    if not args.skip_decode:
        decode(args, results)
    print(f"[{stamp()}] bench_lm finished in {time.perf_counter() - t0:.0f}s; tables: "
          "python benchmarks/report.py lm", flush=True)


if __name__ == "__main__":
    main()
