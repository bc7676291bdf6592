"""Decoding speed: plain greedy vs ``generate(assistant_early_exit=k)`` vs ``stimulative.lm.generate`` (ours).

For each model (an LM run directory, an exported ``save_pretrained`` directory, or ``tiny``: a random 4-layer
Llama for a smoke test), the same prompts are decoded greedily in every mode:

* ``greedy``: ``model.generate(do_sample=False)`` (transformers);
* ``greedy_ours``: ``stimulative.lm.generate`` with ``max_draft_tokens=0`` (plain greedy steps with our calling
  of the layers: how much comes from less Python overhead alone);
* ``hf_exit_<k>``: ``model.generate(assistant_early_exit=k)`` (transformers' defaults: up to 20 drafted tokens,
  confidence threshold 0.4);
* ``ours_exit_<k>``: ``stimulative.lm.generate(model, ids, exit_layer=k)`` (drafts verified from the draft's
  layer-k states; defaults: up to 16 drafted tokens, confidence threshold 0.4, adaptive fallback to greedy).

``--disagree NAME=PATH`` adds a model whose early exits disagree with the full model while staying confident
(the residual outputs of the second half of its layers scaled by 3; on a 300-step CT model about 1/3 of the
drafted tokens are accepted, like the 1,000-step CT model of docs/lm.md): the case the adaptive fallback is for.

Every prompt is decoded in every mode back to back (the order rotates per prompt and pass), ``--repeats``
passes; a mode's ``speedup`` is the median over (prompt, pass) of plain greedy's time over the mode's time, and
``vs_hf_exit`` of ours the median of ``hf_exit_<k>``'s time over ours. Every output must equal plain greedy's
(``equal_greedy``; the script exits with status 1 otherwise, after writing its records). One record per model:
``benchmarks/results/lm/decode_reuse_<name>.json``. Prompts: evenly spaced over the validation split of a run
(exported directories and ``tiny``: random bytes with a fixed seed).

    python benchmarks/bench_decode.py st=benchmarks/work/lm/lm_st ct=benchmarks/work/lm/lm_ct --exits 2 4
    python benchmarks/bench_decode.py                 # the runs of benchmarks/results/lm/{ct,st}.json if present
    python benchmarks/bench_decode.py tiny --prompts 2 --new-tokens 16 --repeats 1 --results /tmp/dec  # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import load_average, machine_info  # benchmarks/machine.py

REPO = Path(__file__).resolve().parents[1]


def write_json(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def default_models(results: Path) -> dict[str, str]:
    """``{name: run_dir}`` of the CT/ST runs bench_lm.py recorded, where the run directory exists here."""
    found = {}
    for key in ("st", "ct", "stpp"):
        path = results / f"{key}.json"
        if path.exists():
            run_dir = json.loads(path.read_text())["run_dir"]
            if Path(run_dir, "last.pt").exists():
                found[key] = run_dir
    return found


def tiny_model() -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=256, eos_token_id=256, pad_token_id=256)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = 256
    return model


def disagree(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    """Scale the residual outputs (attention and MLP output projections) of the second half of the layers: the
    early exits of the first half then disagree with the full model while staying confident."""
    layers = list(model.model.layers if hasattr(model, "model") else model.transformer.h)  # Llama / GPT-2
    with torch.no_grad():
        for layer in layers[len(layers) // 2:]:
            for name, module in layer.named_modules():
                if name.endswith(("o_proj", "down_proj", "attn.c_proj", "mlp.c_proj")):
                    module.weight.mul_(scale)
    return model


def load(name: str, spec: str, args: argparse.Namespace) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The model and the prompts (1-D token tensors)."""
    if name in args.disagree_names:
        model, prompts = load(name + "_source", spec, args)
        return disagree(model, args.disagree_scale), prompts
    g = torch.Generator().manual_seed(0)
    if spec == "tiny":
        return tiny_model(), [torch.randint(0, 256, (args.prompt_tokens,), generator=g) for _ in range(args.prompts)]
    from stimulative.commands.generate import load_model_and_tokenizer
    from stimulative.lm.cli import is_lm_run

    if is_lm_run(spec):
        from stimulative.lm.decode import prompts_from_tokens
        from stimulative.lm.train import load_lm, load_lm_data

        lm = load_lm(spec)
        val = load_lm_data(lm.config, train=False).val
        return lm.model, prompts_from_tokens(val, args.prompts, args.prompt_tokens)
    model, _ = load_model_and_tokenizer(spec)
    return model, [torch.randint(0, 256, (args.prompt_tokens,), generator=g) for _ in range(args.prompts)]


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@torch.no_grad()
def bench(model: torch.nn.Module, prompts: list[torch.Tensor], args: argparse.Namespace) -> dict:
    from stimulative.lm.decode import count_acceptance
    from stimulative.lm.speculative import generate

    pad = model.generation_config.pad_token_id
    hf = {"do_sample": False, "max_new_tokens": args.new_tokens, "pad_token_id": pad}
    ours = {"max_draft_tokens": args.max_draft_tokens, "confidence_threshold": args.confidence,
            "adaptive": not args.no_adaptive}

    def run_mode(mode: str, ids: torch.Tensor, new: int) -> tuple[list[int], dict]:
        kind, _, k = mode.partition("_exit_")
        if mode == "greedy" or kind == "hf":
            extra = {"assistant_early_exit": int(k)} if kind == "hf" else {}
            with count_acceptance() if extra else contextlib.nullcontext(None) as c:
                out = model.generate(ids, attention_mask=torch.ones_like(ids), **{**hf, "max_new_tokens": new},
                                     **extra)
            counts = dict(c) if c is not None else {}
            return out[0, ids.shape[1]:].tolist(), counts
        if mode == "greedy_ours":
            out = generate(model, ids, 1, new, max_draft_tokens=0)
        else:
            out = generate(model, ids, int(k), new, **ours)
        return out.new_tokens.tolist(), {"rounds": out.rounds, "drafted": out.drafted, "accepted": out.accepted,
                                         "full_forwards": out.full_forwards, "greedy_steps": out.greedy_steps}

    modes = ["greedy", "greedy_ours"] + [f"{kind}_exit_{k}" for k in args.exits for kind in ("hf", "ours")]
    for mode in modes:  # warm-up
        run_mode(mode, prompts[0][None], 8)
    times: dict[str, list[float]] = {m: [] for m in modes}
    outs: dict[str, list[list[int]]] = {m: [] for m in modes}
    counts: dict[str, dict[str, int]] = {m: {} for m in modes}
    for r in range(args.repeats):
        for i, p in enumerate(prompts):
            shift = (r * len(prompts) + i) % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                t0 = time.perf_counter()
                tokens, c = run_mode(mode, p[None], args.new_tokens)
                times[mode].append(time.perf_counter() - t0)
                if r == 0:
                    outs[mode].append(tokens)
                    for key, v in c.items():
                        counts[mode][key] = counts[mode].get(key, 0) + v
    result: dict = {}
    for mode in modes:
        n = sum(len(o) for o in outs[mode])
        entry: dict = {"tokens": n, "time_s": sum(times[mode]), "tokens_per_s": n * args.repeats / sum(times[mode]),
                       "speedup": median([g / t for g, t in zip(times["greedy"], times[mode])]),
                       "equal_greedy": outs[mode] == outs["greedy"]}
        c = counts[mode]
        if "_exit_" in mode:
            k = int(mode.rpartition("_")[2])
            rounds = c["full_forwards"] if "full_forwards" in c else c["rounds"]  # hf: one per round
            entry = {"exit": k, **entry, **c, "acceptance": c["accepted"] / max(c["drafted"], 1),
                     "tokens_per_full_forward": n / max(rounds, 1)}
        if mode.startswith("ours_exit_"):
            hf_times = times[mode.replace("ours", "hf")]
            entry["vs_hf_exit"] = median([h / t for h, t in zip(hf_times, times[mode])])
        result[mode] = entry
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", metavar="[NAME=]PATH",
                   help="LM run dirs, exported dirs or 'tiny' (default: the runs of results/{st,ct}.json)")
    p.add_argument("--exits", type=int, nargs="+", default=[2, 4])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-draft-tokens", type=int, default=16)
    p.add_argument("--confidence", type=float, default=0.4)
    p.add_argument("--no-adaptive", action="store_true")
    p.add_argument("--disagree", nargs="*", default=[], metavar="NAME=PATH",
                   help="also these models with the residual outputs of their second half of layers scaled by "
                        "--disagree-scale: confident early exits that disagree with the full model")
    p.add_argument("--disagree-scale", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(REPO / "benchmarks/results/lm"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    specs = dict(m.split("=", 1) if "=" in m else (Path(m).name, m) for m in args.models) or default_models(results)
    extra = dict(m.split("=", 1) if "=" in m else (Path(m).name + "_disagree", m) for m in args.disagree)
    args.disagree_names = set(extra)
    specs.update(extra)
    if not specs:
        print("no models: pass LM run directories (or 'tiny'); the runs of results/{st,ct}.json are not here",
              file=sys.stderr)
        return 2
    unequal = []
    for name, spec in specs.items():
        t0 = time.perf_counter()
        load0 = load_average()
        model, prompts = load(name, spec, args)
        result = bench(model, prompts, args)
        record = {"kind": "decode_reuse", "run": name, "model": spec,
                  "disagree_scale": args.disagree_scale if name in args.disagree_names else None,
                  "layers": model.config.num_hidden_layers,
                  "settings": {"prompts": len(prompts), "prompt_tokens": args.prompt_tokens,
                               "max_new_tokens": args.new_tokens, "repeats": args.repeats,
                               "max_draft_tokens": args.max_draft_tokens, "confidence_threshold": args.confidence,
                               "adaptive": not args.no_adaptive, "threads": args.threads},
                  **result, "wall_s": time.perf_counter() - t0,
                  "command": shlex.join(["python", "benchmarks/bench_decode.py", *sys.argv[1:]]),
                  "machine": {**machine_info(args.threads), "load_average_at_start": load0},
                  "load_average_at_end": load_average()}
        out = results / f"decode_reuse_{name}.json"
        write_json(record, out)
        print(f"{name} ({spec}), {record['layers']} layers, {len(prompts)} prompts x {args.new_tokens} new tokens, "
              f"{args.repeats} passes, {record['wall_s']:.0f} s -> {out}")
        for mode, e in result.items():
            extra = ""
            if "acceptance" in e:
                extra = f", acceptance {e['acceptance']:.1%}, {e['tokens_per_full_forward']:.2f} tokens/full forward"
            if "vs_hf_exit" in e:
                extra += f", {e['vs_hf_exit']:.2f}x hf_exit"
            print(f"  {mode:>14}: {e['tokens_per_s']:7.1f} tokens/s, {e['speedup']:.2f}x greedy{extra}, "
                  f"equal {e['equal_greedy']}", flush=True)
            if not e["equal_greedy"]:
                unequal.append(f"{name}/{mode}")
    if unequal:
        print(f"outputs differ from plain greedy: {', '.join(unequal)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
