"""How often ``stimulative.lm.generate`` differs from ``model.generate`` at near-ties, in float32 and bfloat16.

The decoder verifies several positions in one forward of the deep stack, where ``model.generate`` runs one
position per forward; the two groupings round differently. This script measures, on random tiny Llama and GPT-2
models (4 layers, width 64, vocabulary 257; GPT-2 with an untied head), over seeds x prompts x exits:

* ``multi_vs_single``: the largest difference between the logits of a multi-token forward (16 positions after a
  cached prefix) and those of 16 one-token forwards, absolute and relative to the logits' spread (max - min);
* ``decodes``: the share of decodes (96 new tokens, exits 1..3, forced drafting: up to 8 drafted tokens, no
  confidence threshold) whose output differs from ``model.generate(do_sample=False)``'s, and, where one does, the
  gap between the two top logits of the full model at the first differing position (a near-tie: small);
* the same share for ``model.generate(assistant_early_exit=k)`` (transformers' own self-speculative decoding).

    python benchmarks/measure_ties.py                      # -> benchmarks/results/lm/ties.json
    python benchmarks/measure_ties.py --seeds 2 --prompts 2 --results /tmp/ties   # smoke
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from stimulative.io import benchmark_record, machine_info, write_record

REPO = Path(__file__).resolve().parents[1]
VOCAB, WIDTH, LAYERS = 257, 64, 4


def model_for(family: str, seed: int, dtype: torch.dtype) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    if family == "llama":
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                                       num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=256, bos_token_id=None, eos_token_id=None)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=LAYERS, n_head=4, n_positions=256,
                                      bos_token_id=None, eos_token_id=None, tie_word_embeddings=False)
        model = transformers.GPT2LMHeadModel(cfg)
        with torch.no_grad():  # GPT-2's init (std 0.02) gives near-uniform logits: a head like a trained one's
            model.lm_head.weight.normal_(0, 1.0)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    return model.to(dtype).eval()


@torch.no_grad()
def multi_vs_single(model: torch.nn.Module, prompt: torch.Tensor, m: int = 16) -> tuple[float, float]:
    """(max |difference|, max |difference| / spread of the logits) between one m-token forward and m one-token
    forwards after the same cached prompt."""
    from transformers import DynamicCache

    tail = torch.randint(0, VOCAB, (1, m), generator=torch.Generator().manual_seed(int(prompt.sum())))
    cache = DynamicCache()
    model(prompt, cache=cache, use_cache=True)
    multi = model(tail, cache=cache, use_cache=True).logits[0].float()
    cache = DynamicCache()
    model(prompt, cache=cache, use_cache=True)
    single = torch.cat([model(tail[:, i:i + 1], cache=cache, use_cache=True).logits[0].float()
                        for i in range(m)])
    diff = float((multi - single).abs().max())
    return diff, diff / float(single.max() - single.min())


@torch.no_grad()
def top_gap(model: torch.nn.Module, sequence: torch.Tensor) -> float:
    """The gap between the two largest logits of the full model's last position (one forward, float32 view)."""
    top = model(sequence).logits[0, -1].float().topk(2).values
    return float(top[0] - top[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=6)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", default=str(REPO / "benchmarks/results/lm"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from stimulative.lm.speculative import generate

    t0 = time.perf_counter()
    command = shlex.join(["python", "benchmarks/measure_ties.py", *sys.argv[1:]])
    record: dict = {"kind": "decode_ties",
                    "settings": {"seeds": args.seeds, "prompts": args.prompts, "new_tokens": args.new_tokens,
                                 "exits": list(range(1, LAYERS)), "layers": LAYERS, "width": WIDTH,
                                 "vocab": VOCAB, "max_draft_tokens": 8, "confidence_threshold": 0.0,
                                 "adaptive": False, "threads": args.threads}, "results": {}}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).split(".")[1]
        ours_diff = hf_diff = decodes = 0
        gaps, diffs, rel = [], [], []
        for family in ("llama", "gpt2"):
            for seed in range(args.seeds):
                model = model_for(family, seed, dtype)
                g = torch.Generator().manual_seed(1000 + seed)
                for i in range(args.prompts):
                    prompt = torch.randint(0, VOCAB, (1, 8 + 9 * i), generator=g)
                    d, r = multi_vs_single(model, prompt)
                    diffs.append(d)
                    rel.append(r)
                    ref = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                         max_new_tokens=args.new_tokens)[0].tolist()
                    for k in range(1, LAYERS):
                        ours = generate(model, prompt, k, args.new_tokens, max_draft_tokens=8,
                                        confidence_threshold=0.0, adaptive=False).sequences[0].tolist()
                        decodes += 1
                        if ours != ref:
                            ours_diff += 1
                            at = next(j for j, (a, b) in enumerate(zip(ours, ref)) if a != b)
                            gaps.append(top_gap(model, torch.tensor([ref[:at]])))
                        try:
                            hf = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                                max_new_tokens=args.new_tokens, assistant_early_exit=k)
                            hf_diff += hf[0].tolist() != ref
                        except Exception:  # noqa: BLE001 - assistant_early_exit cannot decode GPT-2 (transformers 5.x)
                            # and leaves config.num_hidden_layers at k when it fails
                            model.config.num_hidden_layers = LAYERS
                            hf_diff = hf_diff if family == "gpt2" else hf_diff + 1
        hf_decodes = decodes // 2  # Llama only
        result = {"decodes": decodes, "ours_differ": ours_diff, "ours_differ_share": ours_diff / decodes,
                  "first_difference_top2_gap": {"max": max(gaps) if gaps else None,
                                                "median": sorted(gaps)[len(gaps) // 2] if gaps else None},
                  "assistant_early_exit_decodes": hf_decodes, "assistant_early_exit_differ": hf_diff,
                  "assistant_early_exit_differ_share": hf_diff / hf_decodes,
                  "multi_vs_single_max_abs": max(diffs), "multi_vs_single_max_rel": max(rel)}
        record["results"][name] = result
        print(f"{name}: ours differs from model.generate in {ours_diff}/{decodes} decodes "
              f"({ours_diff / decodes:.2%}; top-2 logit gap at the first difference: max "
              f"{result['first_difference_top2_gap']['max']}); assistant_early_exit in {hf_diff}/{hf_decodes} "
              f"(Llama only); multi- vs one-token forward logits: max |diff| {max(diffs):.2e} "
              f"({max(rel):.2e} of the logits' spread)", flush=True)
    out = Path(args.results) / "ties.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_record(benchmark_record("measure_ties", record, command=command, setting="decode_ties",
                                  wall_s=time.perf_counter() - t0, machine=machine_info(args.threads)), out)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
