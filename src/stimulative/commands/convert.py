"""Convert a GGUF file (llama.cpp's format, quantized or not) into a transformers save_pretrained directory.

The file is de-quantized to float32 by transformers (AutoModelForCausalLM.from_pretrained(folder,
gguf_file=name)); its weights are copied into a plain model of the same class and saved, with the tokenizer the
file carries and stimulative_convert.json (source file, sha256, tensor types, library versions). DIR appears
complete or not at all. Only architectures elastic depth can cut are converted (llama, gpt2). The result is what
model.pretrained of an LM run, stimulative generate and AutoModelForCausalLM.from_pretrained take; an LM run can
also be given the .gguf file itself (model.pretrained=MODEL.gguf), converted once into ~/.cache/stimulative/gguf.

examples:
  stimulative convert SmolLM2-135M-Instruct.Q4_1.gguf -o smollm2
  stimulative generate smollm2 --exit 24 --prompt "The capital of France is" --compare
  stimulative train my_llama_st.yaml model.pretrained=smollm2   (a recipe without model sizes: docs/lm.md)
"""

from __future__ import annotations

import argparse
import json
import time

HELP = "de-quantize a GGUF model file into a save_pretrained directory (model + tokenizer)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gguf", metavar="MODEL.gguf", help="a GGUF file of a llama or gpt2 model")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="the directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")


def run(args: argparse.Namespace) -> int:
    from ..lm.gguf import CONVERT_INFO, convert_gguf

    t0 = time.perf_counter()
    out = convert_gguf(args.gguf, args.output, overwrite=args.overwrite)
    info = json.loads((out / CONVERT_INFO).read_text())
    types = ", ".join(f"{name} x{count}" for name, count in info["quantization"].items())
    print(f"{out}: {info['model_class']}, {info['parameters'] / 1e6:.1f}M parameters in float32, "
          f"{'with' if info['tokenizer'] else 'without'} tokenizer, from {info['architecture']} GGUF ({types}) "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0
