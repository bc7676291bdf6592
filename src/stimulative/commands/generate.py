"""Greedy text generation with self-speculative decoding that reuses the draft's work (stimulative.lm.generate).

The first --exit layers (+ final norm + LM head) draft tokens; the remaining layers verify them starting from
the draft's own layer-k hidden states, so nothing is computed twice, and the output is the model's plain greedy
output. Prints the text, tokens/s, the acceptance of drafted tokens and the new tokens per full forward.
--compare also decodes the prompt with transformers' plain greedy (model.generate), with our own loop with drafting
off (--max-draft-tokens 0: what the speculative drafts alone gain) and with transformers'
generate(assistant_early_exit=K); each output is "identical" to ours or shown at its first differing position
(exit status 1 if plain greedy's differs), and the speed-ups are medians over --repeats timed runs of each. A
model that assistant_early_exit cannot decode (GPT-2 in transformers 5.x) gets a one-line note instead.

RUN is an LM run directory (stimulative train of a task: lm recipe) or a transformers model directory (stimulative export of an
LM run, or any save_pretrained Llama / GPT-2); the tokenizer is the run's, the one saved in the directory, the
one named in its stimulative_lm.json, or else the byte tokenizer. An exit-adapter run (adapter.layer=K) drafts
through its adapter when --exit is K.

--draft-vocab N --draft-text PATH makes the drafts score only the N most frequent tokens of that text; with
--measure-costs the decoder first times its pieces on this machine and drafts only where they say it pays (a CPU
verifies several positions at well above one step's cost).

examples:
  stimulative generate runs/lm_llama_st --exit 2 --prompt "def main(" --max-new-tokens 96
  stimulative generate lm_st_export --exit 4 --prompt "import " --compare
  stimulative generate smollm2 --exit 8 --adapter exit8.pt --draft-vocab 4096 --draft-text src/ --measure-costs \
      --prompt "def parse_args(argv):" --compare
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

HELP = "greedy text generation with early-exit drafts verified by the rest of the model (LM runs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN", help="an LM run directory or an exported transformers directory")
    parser.add_argument("--exit", dest="exit_layer", type=int, required=True, metavar="K",
                        help="draft with the first K layers (1 <= K < number of layers)")
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="the prompt text")
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="default: 128")
    parser.add_argument("--max-draft-tokens", type=int, default=16, metavar="M",
                        help="at most M drafted tokens per round (default: 16)")
    parser.add_argument("--confidence", type=float, default=0.4, metavar="P",
                        help="end a draft round after a token whose draft probability is below P (default: 0.4)")
    parser.add_argument("--no-adaptive", action="store_true",
                        help="keep drafting even when drafts are rarely accepted (no fallback to greedy steps)")
    parser.add_argument("--compare", action="store_true",
                        help="also run plain greedy, ours without drafts and generate(assistant_early_exit=K); "
                             "say if identical and how much faster ours is")
    parser.add_argument("--repeats", type=int, default=3, metavar="R",
                        help="--compare: timed runs of every decoding, the median is reported (default: 3)")
    parser.add_argument("--adapter", metavar="FILE",
                        help="draft through this exit adapter (stimulative.lm.adapter.save_adapter) on layer K; "
                             "--compare then skips assistant_early_exit, which cannot use it")
    parser.add_argument("--draft-vocab", type=int, default=0, metavar="N",
                        help="the drafts score only the N most frequent tokens of --draft-text (FR-Spec): cheaper "
                             "drafts with a large vocabulary; the output is unchanged")
    parser.add_argument("--draft-text", metavar="PATH",
                        help="--draft-vocab: a text file or folder whose token frequencies choose the vocabulary")
    parser.add_argument("--measure-costs", action="store_true",
                        help="first time a drafted token and the verifying forward on this machine, print the "
                             "agreement drafting needs here, and draft only where the timings say it pays")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="torch threads (default: torch's)")


def load_model_and_tokenizer(path: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """The model (eval mode) and tokenizer of an LM run directory or a ``save_pretrained`` directory."""
    return _load_for_decoding(path, device)[:2]


def _load_for_decoding(path: str | Path, device: str = "cpu") -> tuple[Any, Any, Any]:
    """``load_model_and_tokenizer`` plus the run's exit adapter (an adapter run's; else None)."""
    from ..lm.config import is_lm_run
    from ..lm.data import ByteTokenizer, HFTokenizer, load_tokenizer

    path = Path(path).expanduser()
    if is_lm_run(path):
        from ..runs import _load

        lm = _load(path, device=device)
        return lm.model, lm.tokenizer, lm.exit_adapter
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"RUN {str(path)!r} is neither an LM run directory nor a transformers model "
                                "directory (no config.yaml with task: lm, no config.json)")
    from transformers import AutoModelForCausalLM

    from ..lm.adapter import ADAPTER_FILE, load_adapter

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device).eval()
    # the export of an exit-adapter run ships its adapter
    adapter = load_adapter(path / ADAPTER_FILE, map_location=device) if (path / ADAPTER_FILE).is_file() else None
    if (path / "tokenizer_config.json").is_file():  # stimulative export ships a transformers tokenizer here
        return model, HFTokenizer(path), adapter
    info = path / "stimulative_lm.json"
    spec = json.loads(info.read_text()).get("tokenizer", "byte") if info.is_file() else "byte"
    tok = load_tokenizer(spec)
    if isinstance(tok, ByteTokenizer) and model.config.vocab_size < tok.vocab_size:
        raise ValueError(f"RUN {str(path)!r} has no tokenizer and its vocabulary ({model.config.vocab_size}) is "
                         "smaller than the byte tokenizer's (257)")
    return model, tok, adapter


def _hf_generate(model: Any, ids: Any, new: int, **extra: Any) -> list[int]:
    import torch

    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = model.generation_config.eos_token_id
    if isinstance(pad, (list, tuple)):
        pad = pad[0]
    # an explicit all-ones mask: generate would otherwise mask prompt tokens equal to the pad token
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                         pad_token_id=pad, **extra)
    return out[0, ids.shape[1]:].tolist()


def _timed(decode: Any, repeats: int) -> tuple[list[int], float]:
    """The new tokens of ``decode()`` and the median wall time of ``repeats`` calls (after one warm-up call)."""
    import statistics

    tokens = decode()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decode()
        times.append(time.perf_counter() - t0)
    return tokens, statistics.median(times)


def first_difference(ours: list[int], theirs: list[int]) -> str:
    """"identical", or where two decodings first differ (0-based new-token index, both tokens or the end)."""
    if ours == theirs:
        return "identical"
    i = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    mine = ours[i] if i < len(ours) else "end"
    other = theirs[i] if i < len(theirs) else "end"
    return f"DIFFERS at new token {i}: ours {mine}, theirs {other} ({len(ours)} vs {len(theirs)} new tokens)"


def _draft_vocab(size: int, text: str | None, tok: Any) -> Any:
    """The ``size`` most frequent tokens of ``text`` (a file or a folder of text files, first 8 MB) and EOS."""
    from ..lm.data import corpus_files, encode_files
    from ..lm.speculative import draft_vocabulary

    if size < 0:
        raise ValueError(f"--draft-vocab must be >= 1, got {size}")
    if not text:
        raise ValueError("--draft-vocab needs --draft-text PATH: the text whose token frequencies choose the drafts' "
                         "vocabulary")
    path = Path(text)
    if not path.exists():
        raise ValueError(f"--draft-text {text!r} does not exist")
    split = corpus_files(path) if path.is_dir() else {"train": [path], "val": []}
    files = sorted(set(split["train"]) | set(split["val"]))
    if not files:
        raise ValueError(f"--draft-text {text!r} holds no text file")
    eos = getattr(tok, "eos_token_id", None)
    return draft_vocabulary(encode_files(files, tok, max_bytes=8_000_000), size, keep=[] if eos is None else [eos])


def run(args: argparse.Namespace) -> int:
    import torch

    from ..lm.speculative import generate

    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, run_adapter = _load_for_decoding(args.model, args.device)
    prompt = tok.encode(args.prompt)
    if not prompt:
        raise ValueError("--prompt must encode to at least one token")
    ids = torch.tensor([prompt], dtype=torch.long, device=next(model.parameters()).device)
    mask = torch.ones_like(ids)  # the prompt as written, even where it holds the pad token id
    options = {"max_draft_tokens": args.max_draft_tokens, "confidence_threshold": args.confidence,
               "adaptive": not args.no_adaptive, "attention_mask": mask}
    if getattr(args, "adapter", None):
        from ..lm.adapter import load_adapter

        options["exit_adapter"] = load_adapter(args.adapter, map_location=ids.device)
    elif run_adapter is not None and run_adapter.layer == args.exit_layer:  # an adapter run drafts through its own
        options["exit_adapter"] = run_adapter
        print(f"drafting through the run's exit adapter on layer {run_adapter.layer}", flush=True)
    elif run_adapter is not None:
        print(f"note: the run's exit adapter is on layer {run_adapter.layer}; --exit {args.exit_layer} drafts "
              "through the model's own head", flush=True)
    if getattr(args, "draft_vocab", 0):
        options["draft_vocab"] = _draft_vocab(args.draft_vocab, getattr(args, "draft_text", None), tok)
    generate(model, ids, args.exit_layer, min(4, args.max_new_tokens), **options)  # warm-up (and argument checks)
    if getattr(args, "measure_costs", False):
        from ..lm.speculative import measure_decode_costs

        costs = measure_decode_costs(model, args.exit_layer, exit_adapter=options.get("exit_adapter"),
                                     draft_vocab=options.get("draft_vocab"), prompt_length=max(len(prompt), 1))
        print(f"costs here: a greedy step {costs.step_ms:.1f} ms; a drafted token {costs.draft:.2f} of a step, "
              f"verifying 2 positions {costs.verify[1]:.2f}; "
              f"drafting pays from {costs.break_even():.0%} agreement", flush=True)
        options["costs"] = costs
    out = generate(model, ids, args.exit_layer, args.max_new_tokens, **options)
    layers = model.config.num_hidden_layers
    new = out.new_tokens.tolist()
    print(args.prompt + tok.decode(new))
    print("---")
    print(f"exit {args.exit_layer} of {layers}: {len(new)} new tokens in {out.time_s:.3f} s "
          f"({out.tokens_per_s:.1f} tokens/s); acceptance {out.acceptance:.1%} ({out.accepted}/{out.drafted} "
          f"drafted tokens, {out.rounds} rounds); {out.tokens_per_forward:.2f} tokens per full forward; "
          f"{out.greedy_steps} plain greedy steps", flush=True)
    if not args.compare:
        return 0
    if args.max_new_tokens == 0:
        print("compare: nothing to compare with --max-new-tokens 0 (no new token)")
        return 0

    def ours(**change: Any) -> list[int]:
        return generate(model, ids, args.exit_layer, args.max_new_tokens, **{**options, **change}).new_tokens.tolist()

    new, t_ours = _timed(ours, args.repeats)
    print(f"compare: median of {args.repeats} timed runs each; ours {t_ours:.3f} s "
          f"({len(new) / t_ours:.1f} tokens/s)", flush=True)
    status = 0
    modes = (("plain greedy (model.generate)", lambda: _hf_generate(model, ids, args.max_new_tokens)),
             ("ours without drafts (max_draft_tokens=0)", lambda: ours(max_draft_tokens=0)),
             (f"assistant_early_exit={args.exit_layer} (model.generate)",
              lambda: _hf_generate(model, ids, args.max_new_tokens, assistant_early_exit=args.exit_layer)))
    layers_before = model.config.num_hidden_layers
    for i, (name, decode) in enumerate(modes):
        if i == 2 and "exit_adapter" in options:
            print(f"{name}: skipped, it drafts through the model's own head, not the exit adapter", flush=True)
            continue
        try:
            tokens, seconds = _timed(decode, args.repeats)
        except Exception as e:  # noqa: BLE001 - transformers' assistant_early_exit fails on some models (GPT-2)
            if i != 2:
                raise
            # it sets config.num_hidden_layers to K while drafting and does not restore it when it fails
            model.config.num_hidden_layers = layers_before
            line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"{name}: skipped, transformers cannot decode this model with it ({type(e).__name__}: {line})",
                  flush=True)
            continue
        verdict = first_difference(new, tokens)
        if i == 0 and verdict != "identical":
            status = 1
        print(f"{name}: {len(tokens)} tokens in {seconds:.3f} s ({len(tokens) / seconds:.1f} tokens/s); ours is "
              f"{seconds / t_ours:.2f}x as fast; {verdict}", flush=True)
    return status
