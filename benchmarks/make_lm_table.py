"""Markdown tables of the language-model benchmark from its result files (benchmarks/results/lm/).

Four blocks, each between its own markers in docs/lm.md (the README links there; no block is written into the
README); every number comes from the result files:

* ``lm-table`` (docs/lm.md): from ``<run>.json`` (training runs), ``loafing_lm.json`` and
  ``decode_<run>.json`` written by ``benchmarks/bench_lm.py``: the runs table, the loafing-by-depth table, the
  ``assistant_early_exit`` decoding table and the aims (depth-4 prefix vs depth-4 alone; full model vs CT).
* ``lm-decode-table`` (docs/lm.md): from ``decode_reuse_<name>.json`` written by ``benchmarks/bench_decode.py``:
  plain greedy vs ``assistant_early_exit=k`` vs ``stimulative.lm.generate`` (ours) per model and exit, and
  issue 21's aims (ours >= 1.3x ``assistant_early_exit`` on the ST model at the same exit, >= 1.6x plain greedy
  at its best exit; on CT never more than 5% slower than plain greedy); records with a ``proxy`` entry (random-init
  models, ``bench_decode.py proxy:WIDTH``) in a table of their own, labelled "proxy (random init, scaled later
  layers)" and not counted in the aims; and from ``decode_profile.json`` (``bench_decode.py --profile``) where
  the time of one decoding goes (matrix products, other ATen ops, Python) and plain greedy's time per token
  against the model's width, with the verdict: bound by Python overhead or by arithmetic.
* ``lm-step-cost`` (docs/lm.md): from ``step_cost.json`` written by ``benchmarks/bench_lm_step.py`` (if it
  exists): ST's step time / CT's, and issue 20's aims (<= 1.15x CT for one exit, <= 1.3x for three).
* ``lm-budget`` (docs/lm.md): from ``--budget`` (default ``benchmarks/results/lm_budget``), one folder per seed
  (``s0/``, ``s1/``...) holding the records of ``bench_lm.py --results DIR/sN`` (long budget) and of
  ``bench_decode.py --results DIR/sN`` (``decode_reuse_<run>.json``): validation loss by depth and of the full
  model, mean +- std over seeds, the decoding of every model, and issue 20's aims at this budget (CT's full model
  clearly better than depth 4 alone, the premise; ST's depth-4 prefix within 5% of depth 4 alone; ST's full model
  within 1% of CT's; ST and ST++ ahead of LayerSkip on the prefix losses and the decoding speed-up, LayerSkip
  given ST++'s time when that run exists), each judged on every seed and by the mean; and depth 4 alone drafting
  for CT (``decode_reuse_ct_draft_d4.json``, ``bench_decode.py --draft-model``) against the early exits.

    python benchmarks/make_lm_table.py                       # print the lm-table block
    python benchmarks/make_lm_table.py --block decode        # print another block (lm, decode, step, budget)
    python benchmarks/make_lm_table.py --write docs/lm.md    # replace every block whose markers DOC has
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- lm-table:start (benchmarks/make_lm_table.py) -->", "<!-- lm-table:end -->"
LABELS = {"ct": "CT", "st": "ST", "stpp": "ST++", "layerskip": "LayerSkip", "d4_alone": "depth-4 alone (CT)",
          "ct_time": "CT, ST's time"}
RUN_ORDER = ["ct", "st", "stpp", "layerskip", "ct_time", "d4_alone"]
LOAFING_LABELS = {"ct": "CT", "st": "ST", "stpp": "ST++", "layerskip": "LayerSkip", "ct_time": "CT (ST's time)"}
DEC_START, DEC_END = "<!-- lm-decode-table:start (benchmarks/make_lm_table.py) -->", "<!-- lm-decode-table:end -->"
STEP_START, STEP_END = "<!-- lm-step-cost:start (benchmarks/make_lm_table.py) -->", "<!-- lm-step-cost:end -->"
# issue 21 (decoding that reuses the draft) and issue 20 (cost of an ST step) aims
AIM_VS_HF_EXIT, AIM_VS_GREEDY, AIM_CT_SLOWDOWN = 1.3, 1.6, 0.05
PROXY_LABEL = "proxy (random init, scaled later layers)"
# decode_profile.json: below this estimated share of arithmetic in a token's time, decoding is overhead-bound
ARITHMETIC_BOUND = 0.5
STEP_AIMS = [("1 exit, one forward", 1.15, "one exit"), ("3 exits, one forward", 1.3, "three exits")]


def load(results: Path) -> tuple[dict, dict | None, dict]:
    runs = {}
    for key in RUN_ORDER:
        path = results / f"{key}.json"
        if path.exists():
            runs[key] = json.loads(path.read_text())
    loafing = json.loads((results / "loafing_lm.json").read_text()) if (results / "loafing_lm.json").exists() else None
    decode = {}
    for key in ("ct", "st", "stpp", "layerskip", "ct_time"):
        path = results / f"decode_{key}.json"
        if path.exists():
            decode[key] = json.loads(path.read_text())
    return runs, loafing, decode


def label(key: str, record: dict | None = None) -> str:
    """The run's label; CT at another method's time names that method (``setting`` "equal_time (ST++'s)")."""
    if key == "ct_time" and record is not None and "(" in record.get("setting", ""):
        return f"CT, {record['setting'].split('(')[1].rstrip(')')} time"
    return LABELS.get(key, key)


def runs_table(runs: dict) -> list[str]:
    depths = sorted({int(k[len("val_loss_d"):]) for r in runs.values() for k in r if k.startswith("val_loss_d")})
    head = ["run", "setting", "steps", *[f"val loss d{k}" for k in depths], "val loss (full)", "val ppl",
            "train time (s)", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in runs.items():
        cells = [label(key, r), r["setting"], str(r["steps"])]
        cells += [f"{r[f'val_loss_d{k}']:.4f}" if f"val_loss_d{k}" in r else "" for k in depths]
        cells += [f"{r['val_loss']:.4f}", f"{r['val_ppl']:.3f}", f"{r['train_time_s']:.0f}", f"{r['tokens_per_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def loafing_table(loafing: dict) -> list[str]:
    rows = loafing["rows"]
    names = list(dict.fromkeys(r["run"] for r in rows))
    depths = sorted({r["depth"] for r in rows})
    alone = {int(k): v for k, v in loafing["alone"].items()}
    head = ["depth k", *[f"{n} loss (ppl)" for n in names], "trained alone"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in depths:
        cells = [str(k)]
        for n in names:
            r = next((r for r in rows if r["run"] == n and r["depth"] == k), None)
            if r is None:
                cells.append("")
                continue
            rel = f", {r['rel_to_alone']:+.1%} vs alone" if "rel_to_alone" in r else ""
            cells.append(f"{r['loss']:.4f} ({r['ppl']:.2f}{rel})")
        cells.append(f"{alone[k]['loss']:.4f} ({alone[k]['ppl']:.2f})" if k in alone else "")
        lines.append("| " + " | ".join(cells) + " |")
    s = loafing["settings"]
    lines.append("")
    lines.append(f"Validation: {s['tokens']:,} next-token predictions ({s['val_blocks']} blocks of {s['context']} "
                 f"bytes, held-out files of the {s['data']} corpus); loss in nats per byte.")
    return lines


def decode_table(decode: dict) -> list[str]:
    head = ["model", "decoding", "tokens/s", "speed-up", "drafted", "accepted", "acceptance", "tokens per full forward",
            "= greedy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    settings = None
    for d in decode.values():
        g = d["greedy"]
        settings = d["settings"]
        lines.append(f"| {d['method']} | plain greedy | {g['tokens_per_s']:.1f} | 1.00x | | | | 1.00 | |")
        for name in sorted((k for k in d if k.startswith("exit_")), key=lambda k: int(k[5:])):
            e = d[name]
            lines.append(f"| {d['method']} | early exit k={e['exit']} | {e['tokens_per_s']:.1f} | {e['speedup']:.2f}x | "
                         f"{e['drafted']} | {e['accepted']} | {e['acceptance']:.1%} | {e['tokens_per_round']:.2f} | "
                         f"{'yes' if e['equal_greedy'] else 'NO'} |")
    if settings:
        lines.append("")
        lines.append(f"{settings['prompts']} prompts of {settings['prompt_tokens']} bytes from the validation split, "
                     f"up to {settings['max_new_tokens']} new tokens each, greedy, {settings['threads']} CPU thread; "
                     f"draft settings: transformers' defaults (num_assistant_tokens={settings['num_assistant_tokens']}, "
                     f"schedule {settings['num_assistant_tokens_schedule']}, confidence threshold "
                     f"{settings['assistant_confidence_threshold']}).")
    return lines


def aims(runs: dict, loafing: dict | None, depth: int = 4) -> list[str]:
    lines = []
    alone = runs.get("d4_alone")
    ct = runs.get("ct")
    for key in ("ct", "st", "stpp", "layerskip", "ct_time"):
        r = runs.get(key)
        if r is None:
            continue
        parts = []
        row = None
        if loafing is not None:
            name = f"CT ({label(key, r)[4:].replace(' time', '')} time)" if key == "ct_time" else LOAFING_LABELS[key]
            row = next((x for x in loafing["rows"] if x["run"] == name and x["depth"] == depth), None)
        if row is not None and "rel_to_alone" in row:
            rel = row["rel_to_alone"]
            ct_like = r["method"] == "CT"
            target = "CT: loafing expected" if ct_like else "aim within 5%"
            met = None if ct_like else rel <= 0.05
            parts.append(f"depth-{depth} prefix {row['loss']:.4f} vs {row['alone_loss']:.4f} alone: {rel:+.1%} "
                         f"({target}" + ("" if met is None else f": {'met' if met else 'not met'}") + ")")
        elif alone is not None and f"val_loss_d{depth}" in r:
            rel = r[f"val_loss_d{depth}"] / alone["val_loss"] - 1
            parts.append(f"depth-{depth} prefix vs alone: {rel:+.1%}")
        if ct is not None and key != "ct":
            rel = r["val_loss"] / ct["val_loss"] - 1
            parts.append(f"full model {r['val_loss']:.4f} vs CT {ct['val_loss']:.4f}: {rel:+.2%} (aim within 1%: "
                         f"{'met' if rel <= 0.01 else 'not met'})")
        lines.append(f"- **{label(key, r)}**: " + "; ".join(parts) + ".")
    return lines


def history_table(runs: dict, depth: int = 4) -> list[str]:
    """The aims' two ratios at every validation of training (the runs' metrics histories)."""
    ct, alone = runs.get("ct"), runs.get("d4_alone")
    if ct is None or alone is None:
        return []
    others = [k for k in ("st", "stpp") if k in runs]
    head = ["step", f"CT d{depth} vs alone", *[f"{LABELS[k]} d{depth} vs alone" for k in others],
            *[f"{LABELS[k]} full vs CT" for k in others]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_step = {k: {r["step"]: r for r in runs[k]["history"]} for k in ("ct", "d4_alone", *others)}
    for step in sorted(by_step["ct"]):
        if step not in by_step["d4_alone"] or any(step not in by_step[k] for k in others):
            continue
        a = by_step["d4_alone"][step]["val_loss"]
        c = by_step["ct"][step]
        cells = [str(step), f"{c[f'val_loss_d{depth}'] / a - 1:+.1%}"]
        cells += [f"{by_step[k][step][f'val_loss_d{depth}'] / a - 1:+.1%}" for k in others]
        cells += [f"{by_step[k][step]['val_loss'] / c['val_loss'] - 1:+.2%}" for k in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(results: Path) -> str:
    runs, loafing, decode = load(results)
    out = ["### Training runs (equal steps unless noted)", "", *runs_table(runs), ""]
    if loafing:
        out += ["### Loafing by depth: validation loss of the first k layers inside each model", "",
                *loafing_table(loafing), ""]
    if decode:
        out += ["### Self-speculative decoding on CPU (`generate(..., assistant_early_exit=k)`)", "",
                *decode_table(decode), ""]
    out += ["### Aims", "", *aims(runs, loafing), ""]
    hist = history_table(runs)
    if hist:
        out += ["The same ratios at every validation during training (same validation blocks):", "", *hist, ""]
    rel = results.relative_to(REPO) if results.is_relative_to(REPO) else results
    out.append(f"_Generated by `python benchmarks/make_lm_table.py` from `{rel}/`._")
    return "\n".join(out) + "\n"


def _rel(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def _model_kind(name: str) -> str | None:
    """ST or CT from the record's name (``st``, ``stpp``, ``ct``, ``ct_disagree``, ...); None if neither."""
    head = name.split("_", 1)[0].lower()
    return "ST" if head in ("st", "stpp") else "CT" if head == "ct" else None


def load_decode_reuse(results: Path) -> dict[str, dict]:
    """``{name: record}`` of ``decode_reuse_<name>.json``: ST models first, then by name; proxies last."""
    found = {p.name[len("decode_reuse_"):-len(".json")]: json.loads(p.read_text())
             for p in results.glob("decode_reuse_*.json")}
    order = sorted(found, key=lambda n: ("proxy" in found[n], _model_kind(n) != "ST",
                                         found[n].get("hidden_size", 0), n))
    return {name: found[name] for name in order}


def _label(name: str, record: dict) -> str:
    proxy = record.get("proxy")
    return f"{PROXY_LABEL}, width {proxy['hidden_size']}" if proxy else LABELS.get(name, name)


def _exits(record: dict) -> list[int]:
    return sorted(record[k]["exit"] for k in record if k.startswith("ours_exit_"))


def decode_reuse_table(records: dict[str, dict]) -> list[str]:
    head = ["model", "decoding", "tokens/s", "speed-up vs greedy", "ours vs `assistant_early_exit`",
            "exit agrees with full model", "acceptance", "tokens per full forward", "= greedy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, label: str, e: dict, vs_hf: str = "", agree: str = "", acc: str = "",
            tpf: str = "1.00") -> None:
        lines.append(f"| {_label(name, records[name])} | {label} | {e['tokens_per_s']:.1f} | {e['speedup']:.2f}x | "
                     f"{vs_hf} | {agree} | {acc} | {tpf} | {'yes' if e['equal_greedy'] else 'NO'} |")

    for name, r in records.items():
        row(name, "plain greedy (`generate`)", r["greedy"])
        if "greedy_ours" in r:
            row(name, "ours, no draft", r["greedy_ours"])
        for k in _exits(r):
            agree = r[f"ours_exit_{k}"].get("exit_agreement")
            agree = "" if agree is None else f"{agree:.1%}"
            for mode, label in ((f"hf_exit_{k}", f"`assistant_early_exit={k}`"), (f"ours_exit_{k}", f"ours, exit {k}")):
                if mode in r:
                    e = r[mode]
                    row(name, label, e, f"{e['vs_hf_exit']:.2f}x" if "vs_hf_exit" in e else "", agree,
                        f"{e['acceptance']:.1%}", f"{e['tokens_per_full_forward']:.2f}")
    return lines


def decode_reuse_aims(records: dict[str, dict]) -> list[str]:
    """Issue 21's aims, each with the numbers it is decided on."""
    lines = []
    trained = {n: r for n, r in records.items() if "proxy" not in r}
    st_runs = {n: r for n, r in trained.items() if _model_kind(n) == "ST"}
    ct_runs = {n: r for n, r in trained.items() if _model_kind(n) == "CT"}
    if st_runs:
        parts, ok = [], True
        for n, r in st_runs.items():
            for k in _exits(r):
                v = r[f"ours_exit_{k}"].get("vs_hf_exit")
                if v is not None:
                    parts.append(f"{LABELS.get(n, n)} exit {k}: {v:.2f}x")
                    ok &= v >= AIM_VS_HF_EXIT
        lines.append(f"- **Ours vs `assistant_early_exit` on the ST model at the same exit** (aim >= "
                     f"{AIM_VS_HF_EXIT:.1f}x): " + ", ".join(parts) + f": {_met(ok and bool(parts))}.")
        parts, ok = [], True
        for n, r in st_runs.items():
            exits = _exits(r)
            if exits:
                best = max(exits, key=lambda k: r[f"ours_exit_{k}"]["speedup"])
                v = r[f"ours_exit_{best}"]["speedup"]
                parts.append(f"{LABELS.get(n, n)} at exit {best}: {v:.2f}x")
                ok &= v >= AIM_VS_GREEDY
        lines.append(f"- **Ours vs plain greedy on the ST model at its best exit** (aim >= {AIM_VS_GREEDY:.1f}x): "
                     + ", ".join(parts) + f": {_met(ok and bool(parts))}.")
    else:
        lines.append("- No ST model among the records: the aims on the ST model are not measured.")
    if ct_runs:
        parts, ok = [], True
        for n, r in ct_runs.items():
            cells = []
            for k in _exits(r):
                v = r[f"ours_exit_{k}"]["speedup"]
                cells.append(f"exit {k} {v:.2f}x")
                ok &= v >= 1 - AIM_CT_SLOWDOWN
            no_draft = f" (ours, no draft: {r['greedy_ours']['speedup']:.2f}x)" if "greedy_ours" in r else ""
            parts.append(f"{LABELS.get(n, n)} " + ", ".join(cells) + no_draft)
        lines.append(f"- **Ours on CT never slower than plain greedy by more than {AIM_CT_SLOWDOWN:.0%}** (speed-up "
                     f">= {1 - AIM_CT_SLOWDOWN:.2f}x at every exit): " + "; ".join(parts)
                     + f": {_met(ok and bool(parts))}.")
    else:
        lines.append("- No CT model among the records: the CT aim is not measured.")
    unequal = [f"{LABELS.get(n, n)} {m}" for n, r in records.items() for m, e in r.items()
               if isinstance(e, dict) and e.get("equal_greedy") is False]
    lines.append("- **Outputs**: " + ("every output equals plain greedy's." if not unequal else
                                      "NOT equal to plain greedy: " + ", ".join(unequal) + "."))
    return lines


def _settings_lines(records: dict[str, dict]) -> list[str]:
    out = []
    settings = {json.dumps(r["settings"], sort_keys=True): r["settings"] for r in records.values()}
    for s in settings.values():
        which = [n for n, r in records.items() if r["settings"] == s]
        prefix = "" if len(settings) == 1 else ", ".join(_label(n, records[n]) for n in which) + ": "
        threads = f"{s['threads']} CPU thread{'s' if s['threads'] != 1 else ''}"
        out.append(f"{prefix}{s['prompts']} prompts of {s['prompt_tokens']} "
                   f"{'random ' if all('proxy' in records[n] for n in which) else ''}bytes, up to "
                   f"{s['max_new_tokens']} new tokens each, greedy, {s['repeats']} passes, {threads}; ours: up to "
                   f"{s['max_draft_tokens']} drafted tokens per round, confidence threshold "
                   f"{s['confidence_threshold']}, adaptive {'on' if s['adaptive'] else 'off'}.")
    return out


def _commands(records: dict[str, dict]) -> list[str]:
    out = []
    for command in dict.fromkeys(r["command"] for r in records.values() if r.get("command")):
        out += ["```bash", command, "```", ""]
    return out


def _bound(profile: dict) -> tuple[float, float, float, float] | None:
    """(arithmetic ratio, time ratio, estimated arithmetic share at the narrowest width, widest width) of plain
    greedy in ``decode_profile.json``'s width scaling: with t(w) = overhead + c * flops(w), the arithmetic of the
    narrowest width takes (t_wide - t_narrow) / (flops ratio - 1) of its time t_narrow."""
    rows = sorted(profile.get("width_scaling", {}).get("rows", []), key=lambda r: r["hidden_size"])
    if len(rows) < 2:
        return None
    lo, hi = rows[0], rows[-1]
    f_ratio = hi["flops_per_token"] / lo["flops_per_token"]
    t_ratio = hi["greedy_ms_per_token"] / lo["greedy_ms_per_token"]
    share = max(0.0, (t_ratio - 1) / (f_ratio - 1))
    return f_ratio, t_ratio, share, hi["hidden_size"]


def decode_profile_lines(results: Path) -> list[str]:
    """``decode_profile.json``: where a decoding's time goes, and time per token against width (the verdict)."""
    path = results / "decode_profile.json"
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    s = r["settings"]
    labels = {"greedy": "plain greedy (`generate`)", "greedy_ours": "ours, no draft"}
    out = [f"**Where the time goes** ({r['layers']} layers, width {r['hidden_size']}, `{r['model']}`; "
           f"`torch.profiler`, {s['prompts']} prompts x {s['max_new_tokens']} new tokens per decoding; shares of "
           "the profiled wall time: matrix products = `aten::mm/addmm/bmm` and the attention kernel, other ATen "
           "ops = norms, rotary, softmax, cache concatenation, views and the like, outside ATen ops = Python "
           "(`generate`'s and the layers' code) and the way into the ops):", "", "```bash", r["command"], "```", "",
           "| decoding | ms per new token | profiled | matrix products | other ATen ops | outside ATen ops | "
           "ATen ops per new token | of them matrix products |", "|---|---|---|---|---|---|---|---|"]
    for mode, e in r["modes"].items():
        kind, _, k = mode.partition("_exit_")
        label = labels.get(mode) or (f"`assistant_early_exit={k}`" if kind == "hf" else f"ours, exit {k}")
        out.append(f"| {label} | {e['ms_per_token']:.3f} | {e['ms_per_token_profiled']:.3f} | "
                   f"{e['share_matmul']:.1%} | {e['share_other_ops']:.1%} | {e['share_outside_ops']:.1%} | "
                   f"{e['aten_ops_per_token']:.0f} | {e['matmul_ops_per_token']:.0f} |")
    w = r.get("width_scaling")
    if w and w.get("rows"):
        rows = w["rows"]
        out += ["", f"**Time per new token against width** (random-init {rows[0]['layers']}-layer Llamas, the "
                    f"same prompts, context {s['prompt_tokens']} + {s['max_new_tokens']} tokens; marginal time: "
                    f"(time for {s['max_new_tokens']} new tokens - time for 1) / {s['max_new_tokens'] - 1}, "
                    f"median over {s['prompts']} prompts x {s['repeats']} passes, widths interleaved):", "",
                "| width | parameters | MFLOP per new token | x arithmetic | plain greedy ms per token | x time | "
                "ours, no draft ms per token | x time |", "|---|---|---|---|---|---|---|---|"]
        base = rows[0]
        for row in rows:
            out.append(f"| {row['hidden_size']} | {row['params']:,} | {row['flops_per_token'] / 1e6:.1f} | "
                       f"{row['flops_per_token'] / base['flops_per_token']:.1f}x | {row['greedy_ms_per_token']:.3f} | "
                       f"{row['greedy_ms_per_token'] / base['greedy_ms_per_token']:.2f}x | "
                       f"{row['greedy_ours_ms_per_token']:.3f} | "
                       f"{row['greedy_ours_ms_per_token'] / base['greedy_ours_ms_per_token']:.2f}x |")
    bound = _bound(r)
    if bound:
        f_ratio, t_ratio, share, wide = bound
        verdict = "overhead-bound" if share < ARITHMETIC_BOUND else "arithmetic-bound"
        narrow = base["hidden_size"]
        hi = next(row for row in rows if row["hidden_size"] == wide)
        fixed_wide = base["greedy_ms_per_token"] * (1 - share) / hi["greedy_ms_per_token"]
        matmul = r["modes"].get("greedy", {}).get("share_matmul")
        profiled = (f"; the profile puts {matmul:.0%} of plain greedy's time in matrix products"
                    if matmul is not None and r["hidden_size"] == narrow else "")
        out += ["", f"**Verdict: width {narrow} is {verdict}.** Width {wide} does {f_ratio:.1f}x the arithmetic per "
                    f"token in {t_ratio:.2f}x the time. With time per token = a fixed cost (Python, one call per op, "
                    f"small ops) + a cost per FLOP, at most about {share:.0%} of a width-{narrow} token's time is "
                    f"arithmetic (at most: a wider model's FLOPs cost more each once its weights outgrow the CPU "
                    f"caches){profiled}. At width {wide} the same fixed cost is about {fixed_wide:.0%} of the "
                    f"time: {'arithmetic-bound' if fixed_wide < 0.5 else 'still overhead-bound'} there."]
    return out


def decode_reuse_markdown(results: Path) -> str:
    """The lm-decode-table block: ``decode_reuse_*.json`` as a table, the settings, the commands and the aims;
    the proxies' table; ``decode_profile.json``."""
    records = load_decode_reuse(results)
    if not records:
        return (f"_No record yet (`{_rel(results)}/decode_reuse_*.json`): run `python benchmarks/bench_decode.py`._"
                "\n")
    trained = {n: r for n, r in records.items() if "proxy" not in r}
    proxies = {n: r for n, r in records.items() if "proxy" in r}
    out = []
    if trained:
        out += _commands(trained) + _settings_lines(trained)
        for n, r in trained.items():
            if r.get("disagree_scale"):
                layers = r["layers"]
                out.append(f"`{n}`: `{r['model']}` with the residual outputs of layers {layers // 2 + 1}..{layers} "
                           f"scaled by {r['disagree_scale']:g}.")
        out += ["", *decode_reuse_table(trained), "", "Aims (issue 21):", "", *decode_reuse_aims(trained), ""]
    if proxies:
        out += [f"**{PROXY_LABEL[0].upper() + PROXY_LABEL[1:]}**: not trained models, and not in the aims. "
                "A stand-in for a wider trained model, whose training is too expensive here:", ""]
        for n, r in proxies.items():
            x = r["proxy"]
            first, last = x["scaled_layers"]
            out.append(f"- `{n}`: a random-init {r['layers']}-layer Llama of width {x['hidden_size']} (byte "
                       f"vocabulary), the residual outputs of layers {first}..{last} scaled by "
                       f"{x['residual_scale']:g} (so its early exits agree with the full model at the rate in the "
                       f"table) and its LM head by {x['head_scale']:g} (confident drafts, like a trained model's).")
        out += ["", *_commands(proxies), *_settings_lines(proxies), "", *decode_reuse_table(proxies), ""]
    profile = decode_profile_lines(results)
    if profile:
        out += [*profile, ""]
    names = ",".join(records)
    sources = f"`{_rel(results)}/decode_reuse_{{{names}}}.json`"
    if profile:
        sources += f" and `{_rel(results)}/decode_profile.json`"
    out += [f"_Generated by `python benchmarks/make_lm_table.py --write docs/lm.md` from {sources}._"]
    return "\n".join(out) + "\n"


def step_cost_markdown(results: Path) -> str:
    """The lm-step-cost block: ``step_cost.json`` (bench_lm_step.py) as a table, and issue 20's aims."""
    path = results / "step_cost.json"
    if not path.exists():
        return f"_No record yet (`{_rel(path)}`): run `python benchmarks/bench_lm_step.py`._\n"
    r = json.loads(path.read_text())
    m = r["model"]
    out = ["```bash", r["command"], "```", ""]
    threads = r.get("threads")
    out.append(f"Model: {m['family']}, {m['layers']} layers, width {m['hidden_size']}, context {m['context']}, batch "
               f"{m['batch_size']}, {m['params']:,} parameters"
               + (f"; {threads} CPU thread{'s' if threads != 1 else ''}" if threads else "")
               + (f"; median of {r['repeats']} measurements of {r['steps_per_measurement']} optimizer steps each, "
                  "the settings interleaved" if "repeats" in r and "steps_per_measurement" in r else "") + ".")
    every = r.get("ms_per_step_all_repeats", {})
    head = ["setting", "ms per step", "x CT"] + (["every measurement (ms per step)"] if every else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, ms in r["ms_per_step"].items():
        cells = [name, f"{ms:.1f}", f"{r['cost_x_ct'][name]:.2f}"]
        if every:
            cells.append(", ".join(f"{x:.0f}" for x in every.get(name, [])))
        lines.append("| " + " | ".join(cells) + " |")
    out += ["", *lines, ""]
    spread = [max(v) / min(v) for v in every.values() if v and min(v) > 0]
    if spread:
        out += [f"One setting's measurements differ by up to {max(spread):.1f}x between repeats (max / min).", ""]
    out += ["Aims (issue 20):", ""]
    for name, limit, what in STEP_AIMS:
        if name in r["cost_x_ct"]:
            v = r["cost_x_ct"][name]
            out.append(f"- **{what.capitalize()} read off the main forward** (aim <= {limit:.2f}x CT): {v:.3f}x: "
                       f"{_met(v <= limit)}.")
        else:
            out.append(f"- **{what.capitalize()}** (aim <= {limit:.2f}x CT): not in the record.")
    out += ["", f"_Generated by `python benchmarks/make_lm_table.py --write docs/lm.md` from `{_rel(path)}`._"]
    return "\n".join(out) + "\n"


BUDGET_START, BUDGET_END = "<!-- lm-budget:start (benchmarks/make_lm_table.py) -->", "<!-- lm-budget:end -->"
BUDGET_RUNS = {"ct": "CT", "st": "ST", "stpp": "ST++", "layerskip": "LayerSkip", "d4_alone": "depth-4 alone (CT)",
               "ct_time": "CT, ST++'s time", "layerskip_time": "LayerSkip, ST++'s time",
               "ct_draft_d4": "CT, depth-4 alone drafting"}  # decoding only: CT verifies, depth 4 alone drafts
BUDGET_EXITS = (2, 4)
# issue 20 item 3's aims; the premise: CT's full model this much better (lower loss) than depth 4 alone
AIM_PREFIX_VS_ALONE, AIM_FULL_VS_CT, PREMISE_MARGIN = 0.05, 0.01, 0.01


def _mean_std(values: list[float], fmt: str = "{:.4f}") -> str:
    """``mean ± std`` (sample std) of ``values``; the std drops a ``+`` sign the mean's format gives."""
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.replace('+', '').format(statistics.stdev(values))}"


def load_budget(root: Path) -> tuple[dict[str, dict[int, dict]], dict[str, dict[int, dict]]]:
    """``({run: {seed: record}}, {run: {seed: decode record}})`` of every finished run under ``root/s<seed>/``."""
    runs: dict[str, dict[int, dict]] = {}
    decode: dict[str, dict[int, dict]] = {}
    for folder in sorted(root.glob("s*")):
        if not re.fullmatch(r"s\d+", folder.name) or not folder.is_dir():
            continue
        seed = int(folder.name[1:])
        for key in BUDGET_RUNS:
            if (folder / f"{key}.json").exists():
                runs.setdefault(key, {})[seed] = json.loads((folder / f"{key}.json").read_text())
            if (folder / f"decode_reuse_{key}.json").exists():
                decode.setdefault(key, {})[seed] = json.loads((folder / f"decode_reuse_{key}.json").read_text())
    return runs, decode


def _loss(record: dict, depth: int | None) -> float | None:
    """Validation loss of the full model (``depth`` None, or the run's own depth) or of its depth-``depth`` prefix."""
    if depth is None or depth == record.get("layers"):
        return record["val_loss"]
    return record.get(f"val_loss_d{depth}")


def _paired(runs: dict, a: str, b: str, depth_a: int | None, depth_b: int | None = None) -> list[float]:
    """Relative differences ``loss_a / loss_b - 1`` over the seeds both runs have."""
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    out = []
    for seed in seeds:
        la, lb = _loss(runs[a][seed], depth_a), _loss(runs[b][seed], depth_b)
        if la is not None and lb is not None:
            out.append(la / lb - 1)
    return out


def _pct(values: list[float], per_seed: bool = False) -> str:
    """``mean ± std`` in percent; with ``per_seed`` and more than one value, each seed's value after it."""
    if not values:
        return "no paired seeds yet"
    text = _mean_std([100 * v for v in values], "{:+.2f}") + "%"
    if per_seed and len(values) > 1:
        text += " (per seed " + ", ".join(f"{100 * v:+.2f}" for v in values) + ")"
    return text


def _judge(per_seed: list[bool], mean_ok: bool) -> str:
    """The verdict on an aim: met by the mean and on every seed, by the mean only, or not met (with how many
    seeds meet it when some do). One seed is judged alone."""
    n, k = len(per_seed), sum(per_seed)
    if n == 1:
        return "met" if mean_ok else "not met"
    if mean_ok:
        return "met on every seed" if k == n else f"met by the mean, on {k} of {n} seeds"
    return f"not met (on {k} of {n} seeds)" if k else "not met on any seed"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def budget_aims(runs: dict, decode: dict) -> list[str]:
    lines = []

    def verdict(values: list[float], bound: float) -> str:  # an aim that holds when the loss ratio is <= bound
        return _judge([v <= bound for v in values], statistics.fmean(values) <= bound)

    premise = _paired(runs, "ct", "d4_alone", None)
    if premise:
        lines.append(f"- **Premise, CT's full model clearly better than depth 4 alone** (loss at least "
                     f"{PREMISE_MARGIN:.0%} lower): CT full vs depth 4 alone {_pct(premise, True)} over "
                     f"{_seeds(len(premise))}: {verdict(premise, -PREMISE_MARGIN)}.")
    for key in ("st", "stpp"):
        prefix = _paired(runs, key, "d4_alone", 4)
        if prefix:
            lines.append(f"- **{BUDGET_RUNS[key]}'s depth-4 prefix within {AIM_PREFIX_VS_ALONE:.0%} of depth 4 "
                         f"alone**: {_pct(prefix, True)}: {verdict(prefix, AIM_PREFIX_VS_ALONE)}.")
        full = _paired(runs, key, "ct", None)
        if full:
            lines.append(f"- **{BUDGET_RUNS[key]}'s full model within {AIM_FULL_VS_CT:.0%} of CT's** (equal steps): "
                         f"{_pct(full, True)}: {verdict(full, AIM_FULL_VS_CT)}.")
    for key in ("ct_time", "layerskip_time"):
        full = _paired(runs, "stpp", key, None)
        if full:
            lines.append(f"- Equal time: ST++'s full model vs {BUDGET_RUNS[key]}: {_pct(full, True)}; not an aim, below 0 "
                         "is ST++ ahead.")
    for key in ("st", "stpp"):
        # LayerSkip at the method's time: ST costs less than LayerSkip per step, so its peer is LayerSkip at equal
        # steps (more time than ST's: conservative); ST++ costs more, so LayerSkip given ST++'s time if run
        peer = "layerskip_time" if key == "stpp" and "layerskip_time" in runs else "layerskip"
        if key in runs and peer in runs:
            depths = sorted({int(k[len("val_loss_d"):]) for r in runs[key].values() for k in r
                             if k.startswith("val_loss_d")})
            diffs = {d: _paired(runs, key, peer, d, d) for d in depths}
            ahead = bool(diffs) and all(v and statistics.fmean(v) < 0 for v in diffs.values())
            cells = "; ".join(f"depth {d} {_pct(v)}" for d, v in diffs.items())
            if key == "stpp" and peer == "layerskip":  # the aim is at ST++'s time: equal steps only informs
                lines.append(f"- ST++ against LayerSkip at equal steps (not yet the aim, which gives LayerSkip ST++'s "
                             f"time; that run has no record yet): prefix losses relative to LayerSkip's {cells}: "
                             f"{'ahead' if ahead else 'not ahead'} at every depth.")
                continue
            # a seed meets it when it is ahead at every depth (each depth's list is in the paired seeds' order)
            per_seed = [all(v < 0 for v in column) for column in zip(*diffs.values())]
            lines.append(f"- **{BUDGET_RUNS[key]} ahead of {BUDGET_RUNS[peer]} on the prefix losses** (loss relative "
                         f"to LayerSkip's; below 0 is ahead): {cells}: {_judge(per_seed, ahead)}.")
            if key in decode and peer in decode:
                seeds = [s for s in sorted(set(decode[key]) & set(decode[peer]))
                         if all(f"ours_exit_{k}" in decode[key][s] and f"ours_exit_{k}" in decode[peer][s]
                                for k in BUDGET_EXITS)]
                parts, wins, mean_wins = [], [], []
                for k in BUDGET_EXITS:
                    ours = [decode[key][s][f"ours_exit_{k}"]["speedup"] for s in seeds]
                    theirs = [decode[peer][s][f"ours_exit_{k}"]["speedup"] for s in seeds]
                    if ours:
                        wins.append([a > b for a, b in zip(ours, theirs)])
                        mean_wins.append(statistics.fmean(ours) > statistics.fmean(theirs))
                        parts.append(f"exit {k}: {_mean_std(ours, '{:.2f}')}x vs {_mean_std(theirs, '{:.2f}')}x")
                if parts:
                    lines.append(f"- **{BUDGET_RUNS[key]} ahead of {BUDGET_RUNS[peer]} on the decoding speed-up** "
                                 f"(self-speculative, ours, over plain greedy): {'; '.join(parts)}: "
                                 f"{_judge([all(col) for col in zip(*wins)], all(mean_wins))}.")
    draft = [d["hf_draft"]["speedup"] for d in decode.get("ct_draft_d4", {}).values() if "hf_draft" in d]
    if draft:
        def speedups(kind: str) -> str:  # ours or hf (transformers' assistant_early_exit: the draft model's code)
            return "; ".join(f"{BUDGET_RUNS[key]} exit {k} {_mean_std(v, '{:.2f}')}x" for key in ("st", "stpp")
                             for k in BUDGET_EXITS
                             if (v := [d[f"{kind}_exit_{k}"]["speedup"] for d in decode.get(key, {}).values()
                                       if f"{kind}_exit_{k}" in d]))

        lines.append(f"- Against a separately trained draft model (not an aim; speed-ups over transformers' plain "
                     f"greedy): CT with depth 4 alone drafting {_mean_std(draft, '{:.2f}')}x (transformers' "
                     f"assisted generation); self-speculative through the same transformers code "
                     f"(`assistant_early_exit`): {speedups('hf')}; with `stimulative.lm.generate`: {speedups('ours')}.")
    return lines


GAP_STEPS = (1000, 2000, 4000, 6000, 8000)
GAP_ROWS = (("st", 4, "d4_alone"), ("stpp", 4, "d4_alone"), ("ct", None, "d4_alone"))


def gap_over_training(runs: dict) -> list[str]:
    """How the depth-4 comparisons move with training, from the records' validation histories: the loss of each
    run's depth-4 prefix (CT: its full model) relative to depth 4 alone at the same step, mean ± std over the seeds
    both runs have; one column per step of ``GAP_STEPS`` that the histories reach."""
    def at(record: dict, step: int, depth: int | None) -> float | None:
        row = next((h for h in record.get("history", []) if h.get("step") == step), None)
        return None if row is None else _loss(dict(row, layers=record.get("layers")), depth)

    table = {}
    for a, depth, b in GAP_ROWS:
        seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
        cells = {}
        for step in GAP_STEPS:
            pairs = [(at(runs[a][s], step, depth), at(runs[b][s], step, None)) for s in seeds]
            values = [la / lb - 1 for la, lb in pairs if la is not None and lb is not None]
            if values:
                cells[step] = _pct(values)
        if cells:
            table[a] = (depth, cells)
    steps = [st for st in GAP_STEPS if any(st in cells for _, cells in table.values())]
    if not steps:
        return []
    out = ["Against depth 4 alone as training goes on (loss relative to depth 4 alone at the same step; from the "
           "records' validation histories):", "", "| model | " + " | ".join(f"step {x:,}" for x in steps) + " |",
           "|---|" + "---|" * len(steps)]
    for key, (depth, cells) in table.items():
        name = f"{BUDGET_RUNS[key]} depth-4 prefix" if depth else f"{BUDGET_RUNS[key]} full model"
        out.append(f"| {name} | " + " | ".join(cells.get(x, "–") for x in steps) + " |")
    return out


def budget_markdown(root: Path) -> str:
    runs, decode = load_budget(root)
    rel = _rel(root)
    if not runs:
        return (f"_No record yet (`{rel}/s<seed>/*.json`): run `python benchmarks/bench_lm.py --results "
                f"{rel}/s0 ...` (the command is in docs/lm.md)._\n")
    depths = sorted({int(k[len("val_loss_d"):]) for by_seed in runs.values() for r in by_seed.values()
                     for k in r if k.startswith("val_loss_d")})
    head = ["run", "seeds", "steps", *[f"loss d{d}" for d in depths], "loss (full)", "train time (s)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, by_seed in runs.items():
        rs = [by_seed[s] for s in sorted(by_seed)]
        steps = sorted({r["steps"] for r in rs})
        cells = [BUDGET_RUNS[key], ",".join(str(s) for s in sorted(by_seed)), "/".join(f"{x:,}" for x in steps)]
        cells += [_mean_std([r[f"val_loss_d{d}"] for r in rs if f"val_loss_d{d}" in r]) for d in depths]
        cells += [_mean_std([r["val_loss"] for r in rs]), _mean_std([r["train_time_s"] for r in rs], "{:.0f}")]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Validation loss in nats per byte (256 held-out blocks of 128 bytes, mean ± std over seeds); the "
            "depth-4 model alone has only 4 layers, so its full model is its depth 4."]
    if decode:
        head = ["model", "exit", "acceptance", "tokens per full forward", "speed-up vs greedy", "= greedy"]
        out += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key, by_seed in decode.items():
            # each early exit of ours, then a separate draft model if one drafted (bench_decode.py --draft-model)
            for mode, where in [*((f"ours_exit_{k}", str(k)) for k in BUDGET_EXITS), ("hf_draft", None)]:
                es = [d[mode] for d in by_seed.values() if mode in d]
                if es:
                    where = where or f"draft model ({es[0]['draft_layers']} layers)"
                    out.append(f"| {BUDGET_RUNS[key]} | {where} | {_mean_std([e['acceptance'] for e in es], '{:.1%}')} | "
                               f"{_mean_std([e['tokens_per_full_forward'] for e in es], '{:.2f}')} | "
                               f"{_mean_std([e['speedup'] for e in es], '{:.2f}')}x | "
                               f"{'yes' if all(e['equal_greedy'] for e in es) else 'NO'} |")
        out += ["", "Self-speculative decoding with `stimulative.lm.generate` (drafts of the first k layers, verified "
                "from the draft's layer-k states), on the same prompts for every model; mean ± std over seeds."]
        if any("hf_draft" in d for by_seed in decode.values() for d in by_seed.values()):
            out[-1] += (" A draft model is the alternative without early exits: a separately trained small model "
                        "drafting (transformers' assisted generation, `generate(assistant_model=...)`, its default "
                        "draft settings), here depth 4 trained alone drafting for CT's 8-layer model: two models to "
                        "train and to serve (`bench_decode.py --draft-model`).")
    gap = gap_over_training(runs)
    out += ["", *gap] if gap else []
    aims = budget_aims(runs, decode) or ["- none can be judged yet: each aim compares records of one seed (CT, "
                                         "ST, ST++, LayerSkip or depth 4 alone), and no pair it needs is there."]
    out += ["", "Aims at this budget:", "", *aims, "", f"Records: `{rel}/s<seed>/`."]
    return "\n".join(out) + "\n"


# (start marker, end marker, builder) of every block, by --block name
BLOCKS = {"lm": (START, END, markdown), "decode": (DEC_START, DEC_END, decode_reuse_markdown),
          "step": (STEP_START, STEP_END, step_cost_markdown), "budget": (BUDGET_START, BUDGET_END, budget_markdown)}
BUDGET = REPO / "benchmarks" / "results" / "lm_budget"


def write_blocks(doc: Path, results: Path, budget: Path = BUDGET) -> list[str]:
    """Replace the text between every pair of block markers ``doc`` has; returns the blocks written."""
    text = doc.read_text()
    written = []
    for name, (start, end, build) in BLOCKS.items():
        if start not in text or end not in text:
            continue
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + start + "\n" + build(budget if name == "budget" else results) + end + tail
        written.append(name)
    if not written:
        raise SystemExit(f"{doc} has none of the markers " + ", ".join(s for s, _, _ in BLOCKS.values()))
    doc.write_text(text)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(REPO / "benchmarks/results/lm"))
    p.add_argument("--budget", default=str(BUDGET), help="the long budget's records, one folder per seed (s0, s1...)")
    p.add_argument("--block", choices=list(BLOCKS), default="lm", help="the block to print (without --write)")
    p.add_argument("--write", metavar="DOC", help="replace the text between each pair of block markers of DOC")
    args = p.parse_args()
    results = Path(args.results).resolve()
    if not args.write:
        print(BLOCKS[args.block][2](Path(args.budget).resolve() if args.block == "budget" else results), end="")
        return
    written = write_blocks(Path(args.write), results, Path(args.budget).resolve())
    print(f"updated {args.write}: {', '.join(written)}")


if __name__ == "__main__":
    main()
