"""Markdown tables of the language-model benchmark from its result files (benchmarks/results/lm/).

Reads ``<run>.json`` (training runs), ``loafing_lm.json`` and ``decode_<run>.json`` written by
``benchmarks/bench_lm.py`` and prints (or writes between the markers of a document) the runs table, the
loafing-by-depth table, the decoding speed table and the aims (depth-4 prefix vs depth-4 alone; full model vs CT).
Every number comes from those files.

    python benchmarks/make_lm_table.py                       # print
    python benchmarks/make_lm_table.py --write docs/lm.md    # replace the text between the lm-table markers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- lm-table:start (benchmarks/make_lm_table.py) -->", "<!-- lm-table:end -->"
LABELS = {"ct": "CT", "st": "ST", "stpp": "ST++", "d4_alone": "depth-4 alone (CT)", "ct_time": "CT, ST's time"}
RUN_ORDER = ["ct", "st", "stpp", "ct_time", "d4_alone"]
LOAFING_LABELS = {"ct": "CT", "st": "ST", "stpp": "ST++", "ct_time": "CT (ST's time)"}


def load(results: Path) -> tuple[dict, dict | None, dict]:
    runs = {}
    for key in RUN_ORDER:
        path = results / f"{key}.json"
        if path.exists():
            runs[key] = json.loads(path.read_text())
    loafing = json.loads((results / "loafing_lm.json").read_text()) if (results / "loafing_lm.json").exists() else None
    decode = {}
    for key in ("ct", "st", "stpp"):
        path = results / f"decode_{key}.json"
        if path.exists():
            decode[key] = json.loads(path.read_text())
    return runs, loafing, decode


def runs_table(runs: dict) -> list[str]:
    depths = sorted({int(k[len("val_loss_d"):]) for r in runs.values() for k in r if k.startswith("val_loss_d")})
    head = ["run", "setting", "steps", *[f"val loss d{k}" for k in depths], "val loss (full)", "val ppl",
            "train time (s)", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in runs.items():
        cells = [LABELS.get(key, key), r["setting"], str(r["steps"])]
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
    for key in ("ct", "st", "stpp", "ct_time"):
        r = runs.get(key)
        if r is None:
            continue
        parts = []
        row = None
        if loafing is not None:
            row = next((x for x in loafing["rows"] if x["run"] == LOAFING_LABELS[key] and x["depth"] == depth), None)
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
        lines.append(f"- **{LABELS[key]}**: " + "; ".join(parts) + ".")
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(REPO / "benchmarks/results/lm"))
    p.add_argument("--write", metavar="DOC", help="replace the text between the lm-table markers of DOC")
    args = p.parse_args()
    text = markdown(Path(args.results).resolve())
    if not args.write:
        print(text, end="")
        return
    doc = Path(args.write)
    old = doc.read_text()
    if START not in old or END not in old:
        raise SystemExit(f"{doc} has no {START} ... {END} markers")
    head, rest = old.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(head + START + "\n" + text + END + tail)
    print(f"updated {doc}")


if __name__ == "__main__":
    main()
