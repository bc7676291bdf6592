"""Decoding speed: plain greedy vs ``generate(assistant_early_exit=k)`` vs ``stimulative.lm.generate`` (ours).

For each model (an LM run directory, an exported ``save_pretrained`` directory, or ``tiny``: a random 4-layer
Llama for a smoke test), the same prompts are decoded greedily in every mode:

* ``greedy``: ``model.generate(do_sample=False)`` (transformers);
* ``greedy_ours``: ``stimulative.lm.generate`` with ``max_draft_tokens=0`` (plain greedy steps with our calling
  of the layers: how much comes from less Python overhead alone);
* ``hf_exit_<k>``: ``model.generate(assistant_early_exit=k)`` (transformers' defaults: up to 20 drafted tokens,
  confidence threshold 0.4);
* ``ours_exit_<k>``: ``stimulative.lm.generate(model, ids, exit_layer=k)`` (drafts verified from the draft's
  layer-k states; defaults: up to 16 drafted tokens, confidence threshold 0.4, adaptive fallback to greedy);
* ``hf_draft`` (with ``--draft-model PATH``): ``model.generate(assistant_model=draft)``, transformers' assisted
  generation with a separately trained smaller model drafting (same defaults as ``hf_exit_<k>``): what a user
  would pick instead of early exit, e.g. the depth-4 model trained alone drafting for CT's 8-layer model.
  ``--exits`` with no values leaves only the plain greedy modes and this one.

``proxy:WIDTH`` (e.g. ``proxy_w512=proxy:512``): a random-init 8-layer Llama of that width (byte vocabulary,
width-128 recipe's proportions: 4 heads, MLP 2.6875 x width) whose later layers (``--proxy-from`` .. 8) have
their residual outputs scaled by ``--proxy-scale``, so its early exits agree with the full model at a rate the
scale sets (measured and recorded: ``exit_agreement``), and whose LM head is scaled by ``--proxy-head-scale`` so
the drafts are confident like a trained model's (a random model's are near-uniform, which would end every draft
round after one token at confidence threshold 0.4). A controlled stand-in for a wider trained model, labelled as
such in docs/lm.md; record ``decode_reuse_<name>.json`` with a ``proxy`` entry.

``--disagree NAME=PATH`` adds a model whose early exits disagree with the full model while staying confident
(the residual outputs of the second half of its layers scaled by 3; on the 1,000-step CT model its exits agree
with the full model 18-50% of the time, against CT's own 33-66%): the case the adaptive fallback is for.

Every prompt is decoded in every mode back to back (the order rotates per prompt and pass), ``--repeats``
passes; a mode's ``speedup`` is the median over (prompt, pass) of plain greedy's time over the mode's time; of
ours, ``vs_no_draft`` the median of ``greedy_ours``' time over ours (the speculative gain alone: the same loop with
drafting off) and ``vs_hf_exit`` the median of ``hf_exit_<k>``'s time over ours; the three columns of every
decoding table. ``exit_agreement`` (in ``ours_exit_<k>``):
the share of the generated positions (plain greedy's outputs, teacher-forced) where exit k's greedy token is the
full model's. Every output must equal plain greedy's
(``equal_greedy``; the script exits with status 1 otherwise, after writing its records). One record per model:
``benchmarks/results/lm/decode_reuse_<name>.json``. Prompts: evenly spaced over the validation split of a run
(exported directories and ``tiny``: random bytes with a fixed seed).

    python benchmarks/bench_decode.py st=benchmarks/work/lm/lm_st ct=benchmarks/work/lm/lm_ct \
        --disagree ct_disagree=benchmarks/work/lm/lm_ct --exits 1 2 3 4 --repeats 5
    python benchmarks/bench_decode.py                 # the runs of benchmarks/results/lm/{ct,st}.json if present
    python benchmarks/bench_decode.py tiny --prompts 2 --new-tokens 16 --repeats 1 --results /tmp/dec  # smoke
    python benchmarks/bench_decode.py proxy_w512=proxy:512 --exits 2 4                # the width-512 proxy
    python benchmarks/bench_decode.py ct_draft_d4=benchmarks/work/lm_budget/s0/lm_ct --exits \
        --draft-model benchmarks/work/lm_budget/s0/lm_d4_alone --results benchmarks/results/lm_budget/s0

``--profile``: instead of the speed records, where the time of one decoding goes (``decode_profile.json``), for
the first model: ``torch.profiler`` over every mode (plain greedy, ours without drafts, ``assistant_early_exit``
and ours at ``--exits``): the share of the wall time inside matrix products (``aten::mm/addmm/bmm`` and the
attention kernel), inside all other ATen ops, and outside any ATen op (Python: ``generate``'s and the layers'
code, the dispatcher's way in), and ATen ops per new token; then the marginal time per new token of plain
greedy (and ours without drafts) on random-init 8-layer Llamas of ``--widths`` (default 128 512: 16x the
arithmetic per token), same prompts and lengths, interleaved:

    python benchmarks/bench_decode.py st=benchmarks/work/lm/lm_st --profile --exits 2 4 --prompts 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from lm_decode import count_acceptance, prompts_from_tokens  # benchmarks/lm_decode.py
from machine import load_average  # benchmarks/machine.py

from stimulative.io import benchmark_record, machine_info, write_record

REPO = Path(__file__).resolve().parents[1]


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


def llama(width: int, layers: int = 8, seed: int = 0) -> torch.nn.Module:
    """A random-init Llama with the LM recipes' proportions (byte vocabulary, 4 heads, MLP 2.6875 x width);
    no EOS (every decoding runs to its token budget)."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=257, hidden_size=width, intermediate_size=round(width * 344 / 128),
                                   num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                                   max_position_embeddings=512, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def proxy_model(width: int, scale: float, first_scaled: int, head_scale: float) -> torch.nn.Module:
    """``llama(width)`` with the residual outputs of layers ``first_scaled``..L (1-based) scaled by ``scale`` (the
    early exits before them agree with the full model at a rate the scale sets) and the LM head by
    ``head_scale`` (confident drafts)."""
    model = llama(width)
    with torch.no_grad():
        for layer in model.model.layers[first_scaled - 1:]:
            layer.self_attn.o_proj.weight.mul_(scale)
            layer.mlp.down_proj.weight.mul_(scale)
        model.lm_head.weight.mul_(head_scale)
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
    if spec.startswith("proxy:"):
        model = proxy_model(int(spec.split(":", 1)[1]), args.proxy_scale, args.proxy_from, args.proxy_head_scale)
        return model, [torch.randint(0, 256, (args.prompt_tokens,), generator=g) for _ in range(args.prompts)]
    from stimulative.commands.generate import load_model_and_tokenizer
    from stimulative.lm.config import is_lm_run

    if is_lm_run(spec):

        from stimulative.lm.data import load_lm_data
        from stimulative.runs import _load

        lm = _load(spec)
        val = load_lm_data(lm.config, train=False).val
        return lm.model, prompts_from_tokens(val, args.prompts, args.prompt_tokens)
    try:
        model, _ = load_model_and_tokenizer(spec)
    except (FileNotFoundError, ValueError) as e:  # not a model directory: one line, not a traceback
        sys.exit(f"bench_decode.py: {name}: {e}")
    return model, [torch.randint(0, 256, (args.prompt_tokens,), generator=g) for _ in range(args.prompts)]


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@torch.no_grad()
def exit_agreement(model: torch.nn.Module, prompts: list[torch.Tensor], outputs: list[list[int]],
                   exits: list[int]) -> dict[int, float]:
    """{k: share of the generated positions where exit k's greedy token equals the full model's} along the given
    outputs (teacher-forced: prompt + output in one forward)."""
    from transformers import DynamicCache

    from stimulative.lm.speculative import _Stack

    stack = _Stack(model)
    same = {k: 0 for k in exits}
    total = 0
    for p, out in zip(prompts, outputs):
        if not out:
            continue
        ids = torch.cat([p, torch.tensor(out, dtype=p.dtype)])[None, :-1]
        pos = slice(len(p) - 1, ids.shape[1])  # the positions that predict the generated tokens
        cache, h, done, at_exit = DynamicCache(), stack.embed_at(ids, 0), 0, {}
        for k in sorted(exits):
            h = stack.run(h, range(done, k), 0, cache)
            at_exit[k], done = stack.logits(h[:, pos]).argmax(-1), k
        full = stack.logits(stack.run(h, range(done, len(stack.layers)), 0, cache)[:, pos]).argmax(-1)
        for k in exits:
            same[k] += int((at_exit[k] == full).sum())
        total += full.numel()
    return {k: same[k] / max(total, 1) for k in exits}


def run_mode(model: torch.nn.Module, mode: str, ids: torch.Tensor, new: int,
             args: argparse.Namespace) -> tuple[list[int], dict]:
    """Decode ``ids`` (1, T) in ``mode`` (greedy, greedy_ours, hf_exit_<k>, ours_exit_<k>, hf_draft): new tokens,
    counts."""

    from stimulative.lm.speculative import generate

    kind, _, k = mode.partition("_exit_")
    if mode in ("greedy", "hf_draft") or kind == "hf":
        extra = ({"assistant_model": args.draft} if mode == "hf_draft" else
                 {"assistant_early_exit": int(k)} if kind == "hf" else {})
        with count_acceptance() if extra else contextlib.nullcontext(None) as c:
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                                 pad_token_id=model.generation_config.pad_token_id, **extra)
        counts = dict(c) if c is not None else {}
        return out[0, ids.shape[1]:].tolist(), counts
    mask = torch.ones_like(ids)  # as for model.generate above: the prompt as given, pad ids included
    if mode == "greedy_ours":
        out = generate(model, ids, 1, new, max_draft_tokens=0, attention_mask=mask)
    else:
        out = generate(model, ids, int(k), new, max_draft_tokens=args.max_draft_tokens,
                       confidence_threshold=args.confidence, adaptive=not args.no_adaptive, attention_mask=mask)
    return out.new_tokens.tolist(), {"rounds": out.rounds, "drafted": out.drafted, "accepted": out.accepted,
                                     "full_forwards": out.full_forwards, "greedy_steps": out.greedy_steps}


@torch.no_grad()
def bench(model: torch.nn.Module, prompts: list[torch.Tensor], args: argparse.Namespace) -> dict:
    modes = ["greedy", "greedy_ours"] + [f"{kind}_exit_{k}" for k in args.exits for kind in ("hf", "ours")]
    modes += ["hf_draft"] if args.draft is not None else []
    for mode in modes:  # warm-up
        run_mode(model, mode, prompts[0][None], 8, args)
    times: dict[str, list[float]] = {m: [] for m in modes}
    outs: dict[str, list[list[int]]] = {m: [] for m in modes}
    counts: dict[str, dict[str, int]] = {m: {} for m in modes}
    for r in range(args.repeats):
        for i, p in enumerate(prompts):
            shift = (r * len(prompts) + i) % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                t0 = time.perf_counter()
                tokens, c = run_mode(model, mode, p[None], args.new_tokens, args)
                times[mode].append(time.perf_counter() - t0)
                if r == 0:
                    outs[mode].append(tokens)
                    for key, v in c.items():
                        counts[mode][key] = counts[mode].get(key, 0) + v
    agreement = exit_agreement(model, prompts, outs["greedy"], args.exits)
    result: dict = {}
    for mode in modes:
        n = sum(len(o) for o in outs[mode])
        entry: dict = {"tokens": n, "time_s": sum(times[mode]), "tokens_per_s": n * args.repeats / sum(times[mode]),
                       "speedup": median([g / t for g, t in zip(times["greedy"], times[mode])]),
                       "equal_greedy": outs[mode] == outs["greedy"]}
        c = counts[mode]
        if "_exit_" in mode or mode == "hf_draft":
            where = {"exit": int(mode.rpartition("_")[2])} if "_exit_" in mode else {"draft_layers": args.draft_layers}
            rounds = c["full_forwards"] if "full_forwards" in c else c["rounds"]  # hf: one per round
            entry = {**where, **entry, **c, "acceptance": c["accepted"] / max(c["drafted"], 1),
                     "tokens_per_full_forward": n / max(rounds, 1)}
        if mode.startswith("ours_exit_"):
            hf_times = times[mode.replace("ours", "hf")]
            entry["vs_hf_exit"] = median([h / t for h, t in zip(hf_times, times[mode])])
            entry["vs_no_draft"] = median([g / t for g, t in zip(times["greedy_ours"], times[mode])])
            entry["exit_agreement"] = agreement[entry["exit"]]
        result[mode] = entry
    return result


# ATen ops doing the arithmetic of a decoder layer: matrix products and the attention kernels
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_attention_math", "aten::_efficient_attention_forward")


def decode_flops(model: torch.nn.Module, context: float) -> float:
    """Multiply-adds x 2 of one decoded token: every linear layer's weights once, plus attention over ``context``
    keys (scores and weighted values) in every layer."""
    c = model.config
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 2.0 * linear + 4.0 * context * c.hidden_size * c.num_hidden_layers


@torch.no_grad()
def profile_modes(model: torch.nn.Module, prompts: list[torch.Tensor], args: argparse.Namespace) -> dict:
    """Per mode: ms per new token without and with the profiler, the shares of the profiled wall time in matrix
    products, in other ATen ops and outside ATen ops, ATen ops per new token, the top ops by self time."""
    from torch.profiler import ProfilerActivity, profile

    modes = ["greedy", "greedy_ours"] + [f"{kind}_exit_{k}" for k in args.exits for kind in ("hf", "ours")]
    result = {}
    for mode in modes:
        run_mode(model, mode, prompts[0][None], 8, args)  # warm-up
        walls = []
        for _ in range(args.repeats):
            t0, n = time.perf_counter(), 0
            for p in prompts:
                n += len(run_mode(model, mode, p[None], args.new_tokens, args)[0])
            walls.append((time.perf_counter() - t0) / n)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0, n = time.perf_counter(), 0
            for p in prompts:
                n += len(run_mode(model, mode, p[None], args.new_tokens, args)[0])
            wall = time.perf_counter() - t0
        events = prof.key_averages()
        wall_us = wall * 1e6
        in_ops = sum(e.self_cpu_time_total for e in events)
        matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
        result[mode] = {
            "new_tokens": n, "ms_per_token": 1e3 * median(walls), "ms_per_token_profiled": 1e3 * wall / n,
            "share_matmul": matmul / wall_us, "share_other_ops": (in_ops - matmul) / wall_us,
            "share_outside_ops": 1 - in_ops / wall_us, "aten_ops_per_token": sum(e.count for e in events) / n,
            "matmul_ops_per_token": sum(e.count for e in events if e.key in MATMUL_OPS) / n,
            "top_ops": [{"op": e.key, "per_token": e.count / n, "share": e.self_cpu_time_total / wall_us}
                        for e in top]}
        r = result[mode]
        print(f"  {mode:>14}: {r['ms_per_token']:.3f} ms/token ({r['ms_per_token_profiled']:.3f} profiled), "
              f"matmul {r['share_matmul']:.1%}, other ops {r['share_other_ops']:.1%}, outside ops "
              f"{r['share_outside_ops']:.1%}, {r['aten_ops_per_token']:.0f} ops/token", flush=True)
    return result


@torch.no_grad()
def width_scaling(args: argparse.Namespace) -> dict:
    """Marginal ms per new token of plain greedy (transformers and ours, no draft) on random-init 8-layer Llamas of
    each width in ``args.widths``: (time for N new tokens - time for 1) / (N - 1), median over (prompt, pass), the
    widths and modes interleaved; with the arithmetic per token."""
    models = {w: llama(w) for w in args.widths}
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (args.prompt_tokens,), generator=g) for _ in range(args.prompts)]
    modes = ("greedy", "greedy_ours")
    cells = [(w, m) for w in args.widths for m in modes]
    for w, m in cells:  # warm-up
        run_mode(models[w], m, prompts[0][None], 8, args)
    per_token: dict = {c: [] for c in cells}
    for r in range(args.repeats):
        for i, p in enumerate(prompts):
            shift = (r * len(prompts) + i) % len(cells)
            for w, m in cells[shift:] + cells[:shift]:
                t0 = time.perf_counter()
                run_mode(models[w], m, p[None], 1, args)
                t1 = time.perf_counter()
                n = len(run_mode(models[w], m, p[None], args.new_tokens, args)[0])
                t2 = time.perf_counter()
                per_token[w, m].append(((t2 - t1) - (t1 - t0)) / (n - 1))
    context = args.prompt_tokens + args.new_tokens / 2
    rows = []
    for w in args.widths:
        model = models[w]
        rows.append({"hidden_size": w, "intermediate_size": model.config.intermediate_size,
                     "layers": model.config.num_hidden_layers,
                     "params": sum(p.numel() for p in model.parameters()),
                     "flops_per_token": decode_flops(model, context),
                     **{f"{m}_ms_per_token": 1e3 * median(per_token[w, m]) for m in modes},
                     **{f"{m}_ms_per_token_all": [1e3 * x for x in per_token[w, m]] for m in modes}})
        print(f"  width {w}: {rows[-1]['flops_per_token'] / 1e6:.1f} MFLOP/token, plain greedy "
              f"{rows[-1]['greedy_ms_per_token']:.3f} ms/token, ours (no draft) "
              f"{rows[-1]['greedy_ours_ms_per_token']:.3f} ms/token", flush=True)
    return {"mean_context": context, "rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", metavar="[NAME=]PATH",
                   help="LM run dirs, exported dirs or 'tiny' (default: the runs of results/{st,ct}.json)")
    p.add_argument("--exits", type=int, nargs="*", default=[2, 4],
                   help="early exits to draft from (none: only plain greedy and --draft-model)")
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
    p.add_argument("--proxy-scale", type=float, default=0.01,
                   help="proxy:WIDTH models: the residual outputs of layers --proxy-from..L scaled by this")
    p.add_argument("--proxy-from", type=int, default=3, help="proxy:WIDTH models: the first scaled layer (1-based)")
    p.add_argument("--proxy-head-scale", type=float, default=30.0,
                   help="proxy:WIDTH models: the LM head scaled by this (confident drafts)")
    p.add_argument("--draft-model", metavar="PATH",
                   help="also decode with this model drafting for each model (transformers' assisted generation, "
                        "mode hf_draft): an LM run dir or exported dir with the same vocabulary")
    p.add_argument("--profile", action="store_true",
                   help="profile the first model and measure plain greedy at --widths: decode_profile.json")
    p.add_argument("--widths", type=int, nargs="+", default=[128, 512])
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
    command = shlex.join(["python", "benchmarks/bench_decode.py", *sys.argv[1:]])
    args.draft = args.draft_layers = None
    if args.draft_model:
        if args.profile:
            print("--draft-model is not profiled: drop one of --draft-model and --profile", file=sys.stderr)
            return 2
        args.draft = load("draft", args.draft_model, args)[0].eval()
        args.draft_layers = args.draft.config.num_hidden_layers
    if args.profile:
        name, spec = next(iter(specs.items()))
        t0 = time.perf_counter()
        load0 = load_average()
        model, prompts = load(name, spec, args)
        print(f"profile: {name} ({spec}), {len(prompts)} prompts x {args.new_tokens} new tokens")
        modes = profile_modes(model, prompts, args)
        print(f"width scaling: {args.widths}, {len(prompts)} prompts x {args.new_tokens} new tokens, "
              f"{args.repeats} passes")
        widths = width_scaling(args)
        record = {"kind": "decode_profile", "run": name, "model": spec, "layers": model.config.num_hidden_layers,
                  "hidden_size": model.config.hidden_size,
                  "settings": {"prompts": len(prompts), "prompt_tokens": args.prompt_tokens,
                               "max_new_tokens": args.new_tokens, "repeats": args.repeats, "exits": args.exits,
                               "max_draft_tokens": args.max_draft_tokens, "confidence_threshold": args.confidence,
                               "adaptive": not args.no_adaptive, "threads": args.threads},
                  "matmul_ops": list(MATMUL_OPS), "modes": modes, "width_scaling": widths,
                  "wall_s": time.perf_counter() - t0, "command": command,
                  "machine": {**machine_info(args.threads), "load_average_at_start": load0},
                  "load_average_at_end": load_average()}
        out = results / "decode_profile.json"
        write_record(benchmark_record("bench_decode", record, command=command, setting="profile"), out)
        print(f"-> {out}")
        return 0
    unequal = []
    for name, spec in specs.items():
        t0 = time.perf_counter()
        load0 = load_average()
        model, prompts = load(name, spec, args)
        if args.draft is not None and args.draft.config.vocab_size != model.config.vocab_size:
            print(f"--draft-model {args.draft_model}: vocabulary of {args.draft.config.vocab_size} tokens, {name} has "
                  f"{model.config.vocab_size}: a draft must share the model's vocabulary", file=sys.stderr)
            return 2
        result = bench(model, prompts, args)
        record = {"kind": "decode_reuse", "run": name, "model": spec,
                  "disagree_scale": args.disagree_scale if name in args.disagree_names else None,
                  **({"draft_model": args.draft_model, "draft_layers": args.draft_layers} if args.draft else {}),
                  "layers": model.config.num_hidden_layers, "hidden_size": model.config.hidden_size,
                  **({"proxy": {"init": "random", "hidden_size": model.config.hidden_size,
                                "scaled_layers": [args.proxy_from, model.config.num_hidden_layers],
                                "residual_scale": args.proxy_scale, "head_scale": args.proxy_head_scale}}
                     if spec.startswith("proxy:") else {}),
                  "settings": {"prompts": len(prompts), "prompt_tokens": args.prompt_tokens,
                               "max_new_tokens": args.new_tokens, "repeats": args.repeats,
                               "max_draft_tokens": args.max_draft_tokens, "confidence_threshold": args.confidence,
                               "adaptive": not args.no_adaptive, "threads": args.threads},
                  **result, "wall_s": time.perf_counter() - t0,
                  "command": command,
                  "machine": {**machine_info(args.threads), "load_average_at_start": load0},
                  "load_average_at_end": load_average()}
        out = results / f"decode_reuse_{name}.json"
        write_record(benchmark_record("bench_decode", record, command=command, setting="decode_reuse",
                                      method=name), out)
        print(f"{name} ({spec}), {record['layers']} layers, {len(prompts)} prompts x {args.new_tokens} new tokens, "
              f"{args.repeats} passes, {record['wall_s']:.0f} s -> {out}")
        for mode, e in result.items():
            extra = ""
            if "acceptance" in e:
                extra = f", acceptance {e['acceptance']:.1%}, {e['tokens_per_full_forward']:.2f} tokens/full forward"
            if "vs_no_draft" in e:
                extra += f", {e['vs_no_draft']:.2f}x ours without drafts"
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
