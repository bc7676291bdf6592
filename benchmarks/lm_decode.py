"""Early exit in use: self-speculative decoding with ``transformers``' ``generate(..., assistant_early_exit=k)``.

The first k layers (+ final norm + LM head) of the model draft tokens; the full model verifies them in one
forward and keeps the longest matching prefix plus its own next token, so greedy outputs are exactly the plain
greedy ones (``decode_benchmark`` checks it for every prompt). ``count_acceptance`` counts drafted and accepted
tokens by wrapping the candidate generator's ``update_candidate_strategy`` (which ``generate`` calls after every
verification with the number of matches), so the acceptance rate is the one of the real decoding run::

    result = decode_benchmark(model, prompts, exits=[2, 4], max_new_tokens=128)
    result["exit_2"]["acceptance"], result["exit_2"]["tokens_per_s"], result["greedy"]["tokens_per_s"]
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["count_acceptance", "decode_benchmark", "prompts_from_tokens"]


@contextlib.contextmanager
def count_acceptance() -> Iterator[dict[str, int]]:
    """Within the block, every assisted/early-exit verification adds to ``{"rounds", "drafted", "accepted"}``."""
    from transformers.generation.candidate_generator import AssistedCandidateGenerator

    counts = {"rounds": 0, "drafted": 0, "accepted": 0}
    original = AssistedCandidateGenerator.update_candidate_strategy

    def counting(self, input_ids, scores, num_matches):
        counts["rounds"] += 1
        counts["drafted"] += int(scores.shape[1]) - 1  # candidate_length + 1 verified positions
        counts["accepted"] += int(num_matches)
        return original(self, input_ids, scores, num_matches)

    AssistedCandidateGenerator.update_candidate_strategy = counting
    try:
        yield counts
    finally:
        AssistedCandidateGenerator.update_candidate_strategy = original


def prompts_from_tokens(tokens: torch.Tensor, count: int, length: int) -> list[torch.Tensor]:
    """``count`` prompts of ``length`` tokens evenly spaced over a 1-D token stream (e.g. the validation split)."""
    step = max(1, (len(tokens) - length) // max(count, 1))
    return [tokens[i * step:i * step + length].long() for i in range(count)]


@torch.no_grad()
def decode_benchmark(model: nn.Module, prompts: Sequence[torch.Tensor], exits: Sequence[int] = (2, 4),
                     max_new_tokens: int = 128, repeats: int = 1, warmup: bool = True,
                     **generate_kwargs: Any) -> dict[str, Any]:
    """Greedy decoding of every prompt, plain and with ``assistant_early_exit=k`` for each k in ``exits``.

    Every prompt is decoded in every mode back to back (the order rotates), ``repeats`` times, so a change of
    machine load hits all modes alike; ``speedup`` is the median over (prompt, repeat) of the plain greedy time
    over the mode's time.

    Returns ``{"greedy": {...}, "exit_<k>": {...}, "settings": {...}}``; each mode holds ``tokens`` (new tokens
    of one pass over the prompts), ``time_s`` (all repeats), ``tokens_per_s``; the early-exit entries also
    ``rounds``/``drafted``/``accepted`` (one pass), ``acceptance`` (accepted / drafted), ``tokens_per_round``
    (new tokens per full-model forward), ``speedup`` and ``equal_greedy`` (every output identical to plain
    greedy).
    """
    model.eval()
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False,
              "pad_token_id": model.generation_config.pad_token_id, **generate_kwargs}
    prompts = [p.reshape(1, -1).long() for p in prompts]
    modes = [("greedy", {})] + [(f"exit_{int(k)}", {"assistant_early_exit": int(k)}) for k in exits]
    if warmup:
        for _, extra in modes:
            model.generate(prompts[0], **kwargs, **extra)
    times = {name: [] for name, _ in modes}
    outs: dict[str, list[torch.Tensor]] = {name: [] for name, _ in modes}
    counts = {name: {"rounds": 0, "drafted": 0, "accepted": 0} for name, _ in modes}
    for r in range(repeats):
        for i, p in enumerate(prompts):
            shift = (r + i) % len(modes)
            for name, extra in modes[shift:] + modes[:shift]:
                counting = count_acceptance() if r == 0 and extra else contextlib.nullcontext(None)
                with counting as c:
                    t0 = time.perf_counter()
                    out = model.generate(p, **kwargs, **extra)[0, p.shape[1]:]
                    times[name].append(time.perf_counter() - t0)
                if r == 0:
                    outs[name].append(out)
                    if c is not None:
                        for key in c:
                            counts[name][key] += c[key]
    gc = model.generation_config
    defaults = getattr(gc, "_get_default_generation_params", dict)()  # what generate fills in for None
    draft = {name: getattr(gc, name, None) if getattr(gc, name, None) is not None else defaults.get(name)
             for name in ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")}
    result: dict[str, Any] = {"settings": {"prompts": len(prompts), "prompt_tokens": int(prompts[0].shape[1]),
                                           "max_new_tokens": max_new_tokens, "repeats": repeats, **draft,
                                           "threads": torch.get_num_threads()}}
    greedy_times = times["greedy"]
    for name, extra in modes:
        n = sum(len(o) for o in outs[name])
        entry = {"tokens": n, "time_s": sum(times[name]), "tokens_per_s": n * repeats / sum(times[name])}
        if extra:
            c = counts[name]
            ratios = sorted(g / t for g, t in zip(greedy_times, times[name]))
            entry = {"exit": extra["assistant_early_exit"], **entry, **c,
                     "acceptance": c["accepted"] / max(c["drafted"], 1),
                     "tokens_per_round": n / max(c["rounds"], 1),
                     "speedup": ratios[len(ratios) // 2] if len(ratios) % 2 else
                     0.5 * (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]),
                     "equal_greedy": all(torch.equal(a, b) for a, b in zip(outs[name], outs["greedy"]))}
        result[name] = entry
    return result
