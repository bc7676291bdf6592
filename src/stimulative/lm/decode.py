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
                     max_new_tokens: int = 128, warmup: bool = True, **generate_kwargs: Any) -> dict[str, Any]:
    """Greedy decoding of every prompt, plain and with ``assistant_early_exit=k`` for each k in ``exits``.

    Returns ``{"greedy": {...}, "exit_<k>": {...}}``; each holds ``tokens`` (new tokens), ``time_s``,
    ``tokens_per_s``; the early-exit entries also ``rounds``/``drafted``/``accepted``, ``acceptance``
    (accepted / drafted), ``tokens_per_round`` (new tokens per full-model forward), ``speedup`` (vs plain
    greedy tokens/s) and ``equal_greedy`` (every output identical to plain greedy).
    """
    model.eval()
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False,
              "pad_token_id": model.generation_config.pad_token_id, **generate_kwargs}
    prompts = [p.reshape(1, -1).long() for p in prompts]

    def run(extra: dict[str, Any]) -> tuple[list[torch.Tensor], float, int]:
        outs, t0 = [], time.perf_counter()
        for p in prompts:
            outs.append(model.generate(p, **kwargs, **extra)[0, p.shape[1]:])
        return outs, time.perf_counter() - t0, sum(len(o) for o in outs)

    if warmup:
        model.generate(prompts[0], **kwargs)
    greedy, t_greedy, n_greedy = run({})
    gc = model.generation_config
    defaults = getattr(gc, "_get_default_generation_params", dict)()  # what generate fills in for None
    draft = {name: getattr(gc, name, None) if getattr(gc, name, None) is not None else defaults.get(name)
             for name in ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")}
    result: dict[str, Any] = {"greedy": {"tokens": n_greedy, "time_s": t_greedy, "tokens_per_s": n_greedy / t_greedy},
                              "settings": {"prompts": len(prompts), "prompt_tokens": int(prompts[0].shape[1]),
                                           "max_new_tokens": max_new_tokens, **draft,
                                           "threads": torch.get_num_threads()}}
    for k in exits:
        if warmup:
            model.generate(prompts[0], assistant_early_exit=int(k), **kwargs)
        with count_acceptance() as counts:
            outs, t, n = run({"assistant_early_exit": int(k)})
        timed = dict(counts)
        equal = all(torch.equal(a, b) for a, b in zip(outs, greedy))
        result[f"exit_{k}"] = {"exit": int(k), "tokens": n, "time_s": t, "tokens_per_s": n / t, **timed,
                               "acceptance": timed["accepted"] / max(timed["drafted"], 1),
                               "tokens_per_round": n / max(timed["rounds"], 1),
                               "speedup": (n / t) / result["greedy"]["tokens_per_s"], "equal_greedy": equal}
    return result
