"""Self-speculative greedy decoding whose verification reuses the draft's work (LayerSkip-style).

``transformers``' ``generate(..., assistant_early_exit=k)`` drafts with the first k layers and then verifies
with a full forward that recomputes those k layers for every drafted token. Here the model is split into a
shallow stack (layers 1..k) and a deep stack (layers k+1..L) that share one ``transformers.DynamicCache``:

* **draft**: the shallow stack + final norm + LM head, one token at a time; every drafted token is run through
  the shallow stack at once, so its layer-k hidden state and its keys/values in layers 1..k are kept. A round
  stops after ``max_draft_tokens`` tokens, at a token whose draft probability is below
  ``confidence_threshold`` (that token is still verified, as in ``transformers``), at EOS, or where the
  remaining budget of new tokens is used up.
* **verify**: the deep stack alone, on the layer-k hidden states the draft left behind (the last accepted
  position and the drafted ones) in one multi-token forward: the full model's greedy choice at every drafted
  position. The longest matching prefix is accepted, plus the full model's own next token (the "bonus").
* **roll back**: every layer's cache then holds the last round's accepted positions and the rejected drafts;
  ``DynamicCache.crop`` removes the rejected ones from all layers at once, so layers 1..k and k+1..L hold
  exactly the accepted tokens. The bonus token has been through no layer yet: the next round starts by running
  it through the shallow stack (which the draft needs anyway to predict from it), so nothing is computed twice.

The output is the plain greedy output of the full model, ``model.generate(input_ids, do_sample=False,
max_new_tokens=n)``: the same layers on the same keys/values, the ``generation_config`` settings that change
greedy output applied through ``transformers``' own logits processors, EOS and the token budget as there. Only
the grouping of positions in a forward differs (the deep stack verifies several positions in one forward, the
draft head reads several positions at once): in float32 a multi-token forward differs from one-token forwards
by up to about 1e-5 in the logits (2.5e-7 of their range, measured), so two logits of one position closer than
that may break the other way than in ``model.generate`` (a near-tie, not only an exact tie; none seen in 144
float32 decodes of random models). In bfloat16 near-ties are common: 14% of those decodes differed from
``model.generate``'s somewhere, always from a position whose two top logits were within one bfloat16 rounding
step (``transformers``' own ``assistant_early_exit``: 21%). Measured by ``benchmarks/measure_ties.py``
(``benchmarks/results/lm/ties.json``; docs/lm.md).

Exactness is decided by what was verified, not by what looks alike: ``SUPPORTED`` lists the model classes and
configuration features whose output ``tests/test_generate*.py`` check token for token against
``model.generate`` (float32, the ``transformers`` versions ``pyproject.toml`` pins). Anything else raises
``UnsupportedError`` (a ``ValueError``) in one line naming the feature, and ``model.generate(input_ids,
assistant_early_exit=k)`` is the alternative for a model outside the list. At run time the decoder checks that
the decoder layers really filled the cache (a ``transformers`` whose layers take the cache under another
argument name would otherwise decode from an empty cache).

Adaptive fallback: a running estimate a of how often a drafted token agrees with the full model (over about
the last 10 drafted tokens seen) says whether drafting pays: whether some draft length m is expected to give
more tokens (1 + a + ... + a^m) per unit of work (m c for the drafts, one step for the verifying forward, or
what ``measure_decode_costs`` timed) than plain greedy (1 per step), by ``min_gain``. The
cost c of a drafted token counts the weights it reads, layers 1..k and the draft head, against a plain step's
(all layers and the head): with a large vocabulary the head is most of a shallow draft's cost, which a draft
vocabulary (``draft_vocab``, FR-Spec: the drafts score the most frequent tokens only) removes. Where
it does not, the round is a plain greedy step, which on every fourth such step still reads the draft head on the
layer-k state it computes anyway, so the estimate keeps following the model and drafting resumes when the exits
agree again (every step would cost too much with a large vocabulary: SmolLM2's head is about a fifth of a
forward; with the head read at every step, an adapter exit that rarely agreed decoded at 0.90x our plain loop).
A model whose early exits disagree with the full model (CT) is so decoded at about plain-greedy speed. The
longest draft of a round starts at 4 tokens, doubles (up to ``max_draft_tokens``) after a fully accepted round
and drops to j + 1 after a round whose first j drafts were accepted: agreement comes in runs; within a round
the draft's own confidence can end it earlier.

Batch size 1 only (one unpadded or left-padded prompt). Models: ``LlamaForCausalLM`` and ``GPT2LMHeadModel``
exactly (not subclasses, not other families with the same layout), with the features in ``SUPPORTED``,
including the ones ``stimulative.lm.export`` writes::

    out = generate(model, torch.tensor([[1, 2, 3]]), exit_layer=2, max_new_tokens=64)
    out.sequences, out.acceptance, out.tokens_per_forward
    # drafts over the 4,096 most frequent tokens of your text (the output is the same greedy output)
    out = generate(model, prompt, exit_layer=8, draft_vocab=draft_vocabulary(text_ids, 4096))
"""

from __future__ import annotations

import copy
import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["generate", "draft_vocabulary", "measure_decode_costs", "DecodeCosts", "SpeculativeOutput", "UnsupportedError", "SUPPORTED", "TESTED_TRANSFORMERS"]

# The transformers versions the equality tests ran on (pyproject.toml pins the same range).
TESTED_TRANSFORMERS = ">=5.24,<5.26"
_ALTERNATIVE = "use model.generate(input_ids, assistant_early_exit=k) instead"

# What tests/test_generate.py verifies token for token against model.generate (float32); nothing else is decoded.
SUPPORTED: dict[str, tuple[str, ...]] = {
    "model classes": ("LlamaForCausalLM", "GPT2LMHeadModel"),
    "attention implementations": ("eager", "sdpa"),
    "rope types (Llama)": ("default", "linear", "llama3", "yarn"),
    "layer types": ("full_attention",),
    "GPT-2 attention options": ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "scale_attn_weights"),
    # applied with transformers' logits processors (``model._get_logits_processor``), as model.generate does
    "generation_config settings": ("repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "min_length",
                                   "min_new_tokens", "suppress_tokens", "begin_suppress_tokens", "sequence_bias",
                                   "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty",
                                   "remove_invalid_values", "renormalize_logits"),
}

# generation_config entries that do not change what model.generate(do_sample=False, max_new_tokens=n) returns for
# one prompt: token ids handled here (eos, pad), lengths set here, sampling-only knobs, output/cache/assistant options
_NO_EFFECT = frozenset({
    "bos_token_id", "pad_token_id", "eos_token_id", "decoder_start_token_id", "max_length", "max_new_tokens",
    "do_sample", "temperature", "top_k", "top_p", "typical_p", "min_p", "top_h", "epsilon_cutoff", "eta_cutoff",
    "use_cache", "cache_implementation", "cache_config", "max_cache_len", "compile_config", "disable_compile",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits", "return_dict_in_generate",
    "transformers_version", "_from_model_config", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "assistant_confidence_threshold", "assistant_lookbehind", "target_lookbehind", "assistant_early_exit",
    "is_assistant", "max_matching_ngram_size", "prefill_chunk_size", "continuous_batching_config",
    "length_penalty", "early_stopping", "low_memory", "num_return_sequences"})


class UnsupportedError(ValueError):
    """A model, configuration feature or ``generation_config`` setting whose greedy output this decoder was not
    verified to reproduce; the message names it (one line)."""


def _refuse(feature: str, got: Any, key: str | None = None, alternative: bool = True) -> UnsupportedError:
    verified = f" (verified: {', '.join(SUPPORTED[key])})" if key else ""
    tail = f"; {_ALTERNATIVE}" if alternative else ""
    return UnsupportedError(f"stimulative.lm.generate does not support {feature} {got}{verified}: its output is "
                            f"not verified to equal greedy decoding{tail}")


@dataclass
class SpeculativeOutput:
    """The result of ``generate``: the token ids (prompt + new tokens) and how decoding went.

    ``rounds``: verifications of a non-empty draft; ``drafted``/``accepted``: drafted tokens and how many of them
    the full model accepted; ``full_forwards``: forwards of the deep stack (draft rounds + plain greedy steps);
    ``greedy_steps``: plain greedy steps (no draft: after the acceptance fell too low, or ``max_draft_tokens=0``);
    ``time_s``: wall time of the call.
    """

    sequences: torch.Tensor
    prompt_length: int
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    full_forwards: int = 0
    greedy_steps: int = 0
    time_s: float = 0.0

    @property
    def new_tokens(self) -> torch.Tensor:
        """The generated tokens only, shape ``(new,)``."""
        return self.sequences[0, self.prompt_length:]

    @property
    def acceptance(self) -> float:
        """Accepted / drafted tokens (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_forward(self) -> float:
        """New tokens per forward of the full model's deep stack (1.0 for plain greedy)."""
        return len(self.new_tokens) / max(self.full_forwards, 1)

    @property
    def tokens_per_s(self) -> float:
        return len(self.new_tokens) / self.time_s if self.time_s > 0 else 0.0

    def stats(self) -> dict[str, Any]:
        """The numbers as a JSON-ready dict."""
        return {"new_tokens": len(self.new_tokens), "rounds": self.rounds, "drafted": self.drafted,
                "accepted": self.accepted, "acceptance": self.acceptance, "full_forwards": self.full_forwards,
                "greedy_steps": self.greedy_steps, "tokens_per_forward": self.tokens_per_forward,
                "time_s": self.time_s, "tokens_per_s": self.tokens_per_s}


class _Stack:
    """The pieces of a supported causal LM: embeddings, layers (called directly), final norm, LM head; refuses,
    in one line naming it, any model or feature outside ``SUPPORTED``."""

    def __init__(self, model: nn.Module):
        import transformers

        if not isinstance(model, nn.Module):
            raise UnsupportedError(f"model must be a transformers LlamaForCausalLM or GPT2LMHeadModel, got "
                                   f"{type(model).__name__}")
        name = type(model).__name__
        config = getattr(model, "config", None)
        if type(model) is transformers.LlamaForCausalLM:
            self.family = "llama"
            base = model.model
            self.embed, self.layers, self.norm, self.rotary = base.embed_tokens, base.layers, base.norm, base.rotary_emb
            self.wpe = None
            rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
            if rope not in SUPPORTED["rope types (Llama)"]:
                raise _refuse("rope type", repr(rope), "rope types (Llama)")
        elif type(model) is transformers.GPT2LMHeadModel:
            self.family = "gpt2"
            t = model.transformer
            self.embed, self.layers, self.norm, self.wpe, self.rotary = t.wte, t.h, t.ln_f, t.wpe, None
            if getattr(config, "add_cross_attention", False):
                raise _refuse("config feature", "add_cross_attention", alternative=False)
        else:
            raise _refuse("model class", name, "model classes")
        self.head = model.get_output_embeddings()
        self.impl = getattr(config, "_attn_implementation", None) or "eager"
        if self.impl not in SUPPORTED["attention implementations"]:
            raise _refuse("attention implementation", repr(self.impl), "attention implementations")
        for t in getattr(config, "layer_types", None) or ():
            if t not in SUPPORTED["layer types"]:
                raise _refuse("layer type", repr(t), "layer types")
        if getattr(config, "sliding_window", None) is not None:
            raise _refuse("config feature", f"sliding_window={config.sliding_window}")
        if config.num_hidden_layers != len(self.layers):  # the model's forward runs layers[:num_hidden_layers]
            raise _refuse("config feature", f"num_hidden_layers={config.num_hidden_layers} with "
                          f"{len(self.layers)} layers in the model")
        self.vocab = self.embed.num_embeddings
        # what one token costs, counted as the weights it reads (one-token decoding is memory-bound on a CPU): each
        # layer's parameters and the head's (SmolLM2: the 49,152 x 576 head reads as much as 8 of its 30 layers)
        self.layer_cost = [sum(p.numel() for p in layer.parameters()) for layer in self.layers]
        self.head_cost = self.head.weight.numel()
        self.draft_head_cost = self.head_cost  # set_draft: a draft vocabulary's rows, plus an adapter's weights
        # GPT-2's learned positions: model.generate accepts n_positions + 1 tokens in all (the last new token is
        # never fed to the model); more end in an IndexError inside torch, refused here in one line
        self.max_positions = getattr(config, "n_positions", None) if self.family == "gpt2" else None

    def embed_at(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        h = self.embed(ids)
        if self.wpe is not None:  # GPT-2: learned absolute positions
            h = h + self.wpe(torch.arange(start, start + ids.shape[1], device=ids.device)[None])
        return h

    def run(self, h: torch.Tensor, layers: range, start: int, cache: Any) -> torch.Tensor:
        """Run ``layers`` on positions ``start .. start + h.shape[1] - 1``; their caches hold ``start`` tokens."""
        q = h.shape[1]
        kv = start + q
        mask = None  # one query attends to every cached key; a prefill with SDPA is causal by itself
        if q > 1 and not (start == 0 and self.impl == "sdpa"):
            # query i (position start + i) sees keys 0 .. start + i: SDPA takes a boolean mask, eager an additive one
            keep = torch.arange(kv, device=h.device)[None, :] <= torch.arange(start, kv, device=h.device)[:, None]
            mask = keep if self.impl == "sdpa" else \
                torch.zeros(q, kv, dtype=h.dtype, device=h.device).masked_fill(~keep, torch.finfo(h.dtype).min)
            mask = mask[None, None]
        position_ids = torch.arange(start, kv, device=h.device)[None]
        kwargs: dict[str, Any] = {"attention_mask": mask, "position_ids": position_ids, "cache": cache,
                                  "use_cache": True}
        if self.rotary is not None:
            kwargs["position_embeddings"] = self.rotary(h, position_ids)
        for i in layers:
            out = self.layers[i](h, **kwargs)
            h = out[0] if isinstance(out, tuple) else out  # older transformers return tuples
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h))

    def draft_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The early exit's logits on layer-k states (the shared tail; ``set_draft`` replaces it with an exit
        adapter's or a draft vocabulary's)."""
        return self.logits(h)

    def set_draft(self, exit_adapter: nn.Module | None, rows: torch.Tensor | None) -> None:
        """The drafts only (verification reads ``logits``): through ``exit_adapter``, over the draft vocabulary
        ``rows`` (full-vocabulary logits, the lowest value outside it)."""
        read = self.logits
        if rows is not None:
            weight = self.head.weight[rows].contiguous()  # the rows once, so a draft reads len(rows) x hidden only
            bias = None if getattr(self.head, "bias", None) is None else self.head.bias[rows]
            fill = torch.finfo(weight.dtype).min

            def read(h: torch.Tensor) -> torch.Tensor:
                part = torch.nn.functional.linear(self.norm(h), weight, bias)
                return part.new_full((*part.shape[:-1], self.vocab), fill).index_copy_(-1, rows, part)

        self.draft_head_cost = (self.head_cost if rows is None else len(rows) * self.head.weight.shape[1]) + (
            0 if exit_adapter is None else sum(p.numel() for p in exit_adapter.parameters()))
        if exit_adapter is not None or rows is not None:
            self.draft_logits = (lambda h: read(exit_adapter(h))) if exit_adapter is not None else read


_PRIOR_AGREEMENT = 0.5  # before anything is seen: enough to draft from an exit in the first 45% of the layers
_DECAY = 0.9  # per observed draft token: the estimate follows about the last 10 of them
# a plain greedy step reads the draft head on every _WATCH_EVERY-th step only: with a large vocabulary the head is
# a sizeable share of a forward (SmolLM2: 49,152 x 576, about a fifth), which reading it at every step would cost
_WATCH_EVERY = 4
_FIRST_LENGTH = 4  # the adaptive draft length starts here, doubles after a fully accepted round


def _draft_cost(stack: _Stack, k: int) -> float:
    """What one drafted token costs, as a share of a plain greedy step: layers 1..k and the draft head, against
    all layers and the head (weights read per token)."""
    return (sum(stack.layer_cost[:k]) + stack.draft_head_cost) / (sum(stack.layer_cost) + stack.head_cost)


def _drafting_pays(agree: float, cost: float, m_max: int, min_gain: float,
                   verify: Sequence[float] = (1.0,)) -> bool:
    """Whether some draft length m <= m_max is expected to give ``min_gain`` times plain greedy's tokens per
    unit of work.

    A round with m drafts runs layers 1..k and the draft head once per drafted token and the full step (layers
    1..k on the last accepted token, the deep layers and the head on all m + 1 positions in one forward) once:
    m * cost + verify(m + 1) greedy steps' work (``cost``: ``_draft_cost`` or measured; ``verify[q - 1]``: a
    step on q positions, the last entry for longer ones; 1 where positions come free, as on a GPU), for
    1 + a + ... + a^m tokens on average if each drafted token agrees with the full model with probability a
    (given that the previous ones did); plain greedy: 1 token per step.
    """
    return _draft_gain(agree, cost, m_max, verify) > min_gain


def _draft_gain(agree: float, cost: float, m_max: int, verify: Sequence[float]) -> float:
    """The best draft length's tokens per unit of work against plain greedy's (``_drafting_pays`` for the terms);
    0 without room for a draft. Lengths past the one whose last token agrees with probability below 1e-3 add
    nothing worth a draft and are not tried."""
    best, tokens, term = 0.0, 1.0, 1.0
    for m in range(1, m_max + 1):
        term *= agree
        tokens += term
        best = max(best, tokens / (m * cost + verify[min(m, len(verify) - 1)]))
        if term < 1e-3:
            break
    return best


@dataclass(frozen=True)
class DecodeCosts:
    """What a decoding round costs on this machine, measured by ``measure_decode_costs``, for ``generate(costs=)``.

    ``draft``: one drafted token (layers 1..k and the draft head), ``verify[q - 1]``: the verifying forward on q
    positions (layers 1..k on the last accepted token, layers k+1..L and the head on q positions), both as a share
    of a plain greedy step (``step_ms``). Valid for the exit, adapter and draft vocabulary it was measured with.
    """

    exit_layer: int
    draft: float
    verify: tuple[float, ...]
    step_ms: float
    adapter: bool = False
    draft_vocab: int | None = None

    def check(self, exit_layer: int, exit_adapter: nn.Module | None, rows: torch.Tensor | None) -> None:
        got = (exit_layer, exit_adapter is not None, None if rows is None else len(rows))
        want = (self.exit_layer, self.adapter, self.draft_vocab)
        if got != want:
            raise ValueError(f"costs were measured for exit_layer={want[0]}, an exit adapter: {want[1]}, draft "
                             f"vocabulary {want[2]}; this call decodes with {got[0]}, {got[1]}, {got[2]}: measure "
                             "them for this setting (measure_decode_costs)")

    def speedup(self, agreement: float, max_draft_tokens: int = 16) -> float:
        """The best draft length's tokens per unit of work against plain greedy's, if each drafted token agrees
        with the full model with probability ``agreement`` (independently; real agreement comes in runs)."""
        return _draft_gain(agreement, self.draft, max_draft_tokens, self.verify)

    def agreement_for(self, speedup: float = 1.0, max_draft_tokens: int = 16) -> float:
        """The lowest agreement at which some draft length reaches ``speedup`` (1.0 if none does below 100%), to
        about 1e-9: not rounded, so that an agreement reachable only just below 100% is not read as "never"."""
        if self.speedup(1.0, max_draft_tokens) < speedup:
            return 1.0
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self.speedup(mid, max_draft_tokens) >= speedup else (mid, hi)
        return hi

    def break_even(self, max_draft_tokens: int = 16) -> float:
        """The lowest agreement at which drafting pays at all on these costs (1.0 if it never does)."""
        return self.agreement_for(1.0, max_draft_tokens)


def _sync(device: torch.device) -> None:
    """Wait for ``device``'s queued kernels (a CUDA device runs them after the call that queued them returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_decode_costs(model: nn.Module, exit_layer: int, *, exit_adapter: nn.Module | None = None,
                         draft_vocab: torch.Tensor | Sequence[int] | None = None, prompt_length: int = 128,
                         max_positions: int = 8, repeats: int = 9, seed: int = 0) -> DecodeCosts:
    """Time the pieces of a decoding round on this machine (medians of ``repeats``) after a random prompt of
    ``prompt_length`` tokens: a plain greedy step, a drafted token and the verifying forward on 1..``max_positions``
    positions. On a CPU a forward on several positions is not free (SmolLM2-135M, float32, 1 thread: 2 positions
    cost 1.37 steps, 8 cost 1.67), so drafting must agree more often to pay than the weights alone say; pass
    the result to ``generate(costs=...)`` and it drafts only where these costs say it pays.

    Example::

        costs = measure_decode_costs(model, 8, draft_vocab=vocab)
        costs.break_even()  # the agreement an exit needs before drafting pays here
        out = generate(model, ids, 8, draft_vocab=vocab, costs=costs)
    """
    import statistics

    from transformers import DynamicCache

    stack = _Stack(model)
    n_layers = len(stack.layers)
    k = _as_int(exit_layer)
    if k is None or not 1 <= k <= n_layers - 1:
        raise ValueError(f"exit_layer must be an int in 1..{n_layers - 1} for this {n_layers}-layer model, "
                         f"got {exit_layer!r}")
    if prompt_length < 1 or max_positions < 1 or repeats < 1:
        raise ValueError("prompt_length, max_positions and repeats must be >= 1")
    device = next(model.parameters()).device
    rows = None if draft_vocab is None else _draft_rows(draft_vocab, stack.vocab, device)
    training = model.training
    model.eval()
    if exit_adapter is not None:
        exit_adapter.eval()
    stack.set_draft(exit_adapter, rows)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, stack.vocab, (1, prompt_length + max_positions), generator=g).to(device)
    n = prompt_length
    cache = DynamicCache()

    def rewind() -> None:  # every layer back to the prompt's positions
        for layer in cache.layers:
            extra = layer.get_seq_length() - n
            if extra > 0:
                layer.crop(-extra)

    def timed(fn: Any) -> float:
        fn()  # warm up
        rewind()
        times = []
        for _ in range(repeats):
            _sync(device)  # on a GPU the kernels run after the call returns: time them to the end
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
            rewind()
        return statistics.median(times)

    def shallow(q: int = 1) -> torch.Tensor:
        return stack.run(stack.embed_at(ids[:, n:n + q], n), range(k), n, cache)

    try:
        stack.run(stack.embed_at(ids[:, :n], 0), range(n_layers), 0, cache)
        h = shallow()[:, -1:]
        rewind()
        step = timed(lambda: stack.logits(stack.run(shallow(), range(k, n_layers), n, cache)[0, -1]))
        draft = timed(lambda: stack.draft_logits(shallow()[0, -1]))
        verify = []
        for q in range(1, max_positions + 1):
            hq = h.expand(1, q, -1).contiguous()
            verify.append(timed(lambda hq=hq: (shallow(), stack.logits(stack.run(hq, range(k, n_layers), n,
                                                                                  cache)[0]))))
    finally:
        model.train(training)
    return DecodeCosts(k, round(draft / step, 4), tuple(round(v / step, 4) for v in verify), round(1000 * step, 3),
                       exit_adapter is not None, None if rows is None else len(rows))


def _eos_set(model: nn.Module, eos_token_id: int | Sequence[int] | None) -> set[int]:
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, torch.Tensor):
        eos_token_id = eos_token_id.tolist()
    return {int(t) for t in (eos_token_id if isinstance(eos_token_id, (list, tuple, set)) else [eos_token_id])}


def _as_int(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer (int, numpy integer, 0-d integer tensor), not a bool."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _generation_settings(model: nn.Module) -> tuple[Any, list[str]]:
    """A copy of ``model.generation_config`` and the settings in it that change greedy output (applied with
    logits processors); refuses, naming it, a setting that changes the output and that is not in ``SUPPORTED``."""
    from transformers import GenerationConfig

    config = getattr(model, "generation_config", None)
    if config is None:
        return GenerationConfig(), []
    defaults = GenerationConfig().to_dict()
    applied = []
    for key, value in config.to_dict().items():
        if key not in defaults or value == defaults[key] or key in _NO_EFFECT:
            continue
        if key in ("num_beams", "guidance_scale") and value in (1, 1.0, None):
            continue
        if key not in SUPPORTED["generation_config settings"]:
            raise UnsupportedError(f"stimulative.lm.generate does not support generation_config.{key}={value!r} "
                                   f"(it changes model.generate's output; applied: "
                                   f"{', '.join(SUPPORTED['generation_config settings'])}): set it to "
                                   f"{defaults[key]!r} or use model.generate")
        applied.append(key)
    return copy.deepcopy(config), applied


def _processors(model: nn.Module, config: Any, eos: set[int], padded: torch.Tensor, mask: torch.Tensor,
                max_new_tokens: int) -> Any:
    """transformers' logits processors for ``config`` as ``model.generate(padded, attention_mask=mask,
    do_sample=False, max_new_tokens=...)`` builds them (the same lengths, special tokens and order)."""
    length = padded.shape[1]
    config.do_sample = False
    config.eos_token_id = sorted(eos) or None
    config.max_new_tokens = max_new_tokens
    config.max_length = length + max_new_tokens
    if config.min_new_tokens is not None:
        config.min_length = config.min_new_tokens + length
    model._prepare_special_tokens(config, True, device=padded.device)
    return model._get_logits_processor(generation_config=config, input_ids_seq_length=length,
                                       encoder_input_ids=padded, device=padded.device,
                                       model_kwargs={"attention_mask": mask})


def _padding(model: nn.Module, ids: torch.Tensor, attention_mask: Any, eos: set[int]) -> int:
    """The number of left-padding positions of the prompt: from ``attention_mask``, or, without one, inferred
    as ``model.generate`` does (positions holding the pad token id, if it is set and is not an EOS token)."""
    if attention_mask is None:
        pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
        pad = pad[0] if isinstance(pad, (list, tuple)) and pad else pad
        if pad is None or int(pad) in eos or not bool((ids == int(pad)).any()):
            return 0
        mask = (ids != int(pad)).long()
        where = f"the prompt holds the pad token id {int(pad)} (generation_config.pad_token_id)"
        fix = ("; model.generate(input_ids) masks it, which only left padding reproduces: pass "
               "attention_mask=torch.ones_like(input_ids) to decode it as a token")
    else:
        mask = torch.as_tensor(attention_mask, device=ids.device)
        if mask.dim() == 1:
            mask = mask[None]
        if tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(ids.shape)}, got "
                             f"{tuple(mask.shape)}")
        if mask.dtype.is_floating_point or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only")
        mask = mask.long()
        where, fix = "attention_mask", ""
    row = mask[0].tolist()
    n_pad = row.index(1) if 1 in row else len(row)
    if n_pad == len(row):
        raise ValueError(f"{where}: every position is padding, no prompt token is left")
    if 0 in row[n_pad:]:
        raise ValueError(f"{where}: position {n_pad + row[n_pad:].index(0)} is masked after a prompt token; "
                         f"only left padding (zeros, then ones) is supported{fix}")
    return n_pad


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor | Sequence[int], exit_layer: int | None,
             max_new_tokens: int = 128, *, attention_mask: torch.Tensor | Sequence[int] | None = None, max_draft_tokens: int = 16,
             confidence_threshold: float = 0.4, eos_token_id: int | Sequence[int] | None = None,
             adaptive: bool = True, min_gain: float = 1.1, exit_adapter: nn.Module | None = None,
             draft_vocab: torch.Tensor | Sequence[int] | None = None, costs: DecodeCosts | None = None
             ) -> SpeculativeOutput:
    """Greedy decoding of one prompt with drafts from the first ``exit_layer`` layers, verified by the rest.

    The result is token for token ``model.generate(input_ids, attention_mask=attention_mask, do_sample=False,
    max_new_tokens=...)`` (float32, up to near-ties within about 1e-5 of each other; in bfloat16 near-ties make
    some decodes differ: 14% of random-model decodes did, see the module docstring), including stopping right
    after an EOS token and the ``generation_config`` settings that change greedy output
    (``repetition_penalty``, ``no_repeat_ngram_size``, ``suppress_tokens``,
    ``min_new_tokens``, ...: applied with transformers' logits processors; a setting not verified is refused).
    Only the speed depends on how often the early exit agrees with the full model. Batch size 1 only.

    Args:
        model: a ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` with the features in ``SUPPORTED`` (anything else
            raises ``UnsupportedError`` naming the feature); its train/eval mode is restored on return.
        input_ids: the prompt, shape ``(1, T)`` or ``(T,)``, T >= 1, ids in the model's vocabulary.
        exit_layer: k, the draft's depth: the first k of the model's L layers, 1 <= k <= L - 1 (an int, a numpy
            integer or a 0-d integer tensor; None with ``exit_adapter``: the adapter's layer).
        max_new_tokens: at most this many new tokens.
        attention_mask: None, or the prompt's mask: all ones, or left padding (zeros, then ones; the padding is
            kept in ``.sequences`` as ``model.generate`` keeps it). None with a prompt holding the model's pad
            token id: the mask is inferred as ``model.generate`` infers it (left padding decodes, a pad id after
            a token is refused: pass ``torch.ones_like(input_ids)`` to decode it as a token).
        max_draft_tokens: at most this many drafted tokens per round (0: plain greedy with the same code).
        confidence_threshold: end a draft round after a token whose draft probability is below this (0: never).
        eos_token_id: stop after this token (or any of these); default ``model.generation_config.eos_token_id``.
        adaptive: take plain greedy steps while drafting does not pay off, judged from the running agreement
            of the early exit with the full model, and adapt the draft length to the recent rounds (see the
            module docstring); False: always draft up to ``max_draft_tokens``.
        min_gain: draft only where the estimated tokens per layer pass beat plain greedy's by this factor.
        exit_adapter: an ``stimulative.lm.adapter.ExitAdapter`` trained on this model's layer ``exit_layer``
            (``None``: the model's own final norm + head read layer k). The drafts go through it; the verifying
            layers get the plain layer-k states, so the output is the same greedy output.
        draft_vocab: None, or the token ids the drafts may propose (e.g. ``draft_vocabulary``: the most frequent
            tokens of your text; FR-Spec, https://arxiv.org/abs/2502.14856): the draft head computes only those
            rows of the LM head, which with a large vocabulary is most of a draft's cost. Verification reads the
            full head, so the output is the same greedy output; a token outside the set is never drafted.
        costs: None (a drafted token costs the weights it reads, a verifying forward one step whatever its
            positions: right where several positions come free, as on a GPU), or ``measure_decode_costs``'s
            timings on this machine for this exit, adapter and draft vocabulary (the adaptive mode then drafts
            only where the measured costs say it pays).

    Returns:
        ``SpeculativeOutput``: ``.sequences`` (1, T + new) like ``model.generate``, and the counts.

    Example::

        import torch, transformers
        from stimulative.lm import generate
        cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                       num_attention_heads=2, num_key_value_heads=1)
        model = transformers.LlamaForCausalLM(cfg).eval()
        out = generate(model, torch.tensor([[1, 2, 3]]), exit_layer=2, max_new_tokens=20)
        ref = model.generate(torch.tensor([[1, 2, 3]]), do_sample=False, max_new_tokens=20)
        assert torch.equal(out.sequences, ref)
    """
    t0 = time.perf_counter()
    stack = _Stack(model)
    if exit_adapter is not None:
        if not isinstance(exit_adapter, nn.Module) or not hasattr(exit_adapter, "layer"):
            raise ValueError(f"exit_adapter must be an ExitAdapter (stimulative.lm.adapter), got "
                             f"{type(exit_adapter).__name__}")
        if exit_layer is None:
            exit_layer = exit_adapter.layer
        if _as_int(exit_layer) != exit_adapter.layer:
            raise ValueError(f"exit_adapter was trained on layer {exit_adapter.layer}, not exit_layer={exit_layer}")
        if getattr(exit_adapter, "hidden_size", None) != getattr(model.config, "hidden_size", None):
            raise ValueError(f"exit_adapter's hidden_size {exit_adapter.hidden_size} is not the model's "
                             f"{getattr(model.config, 'hidden_size', None)}")
    n_layers = len(stack.layers)
    if n_layers < 2:
        raise UnsupportedError(f"stimulative.lm.generate needs a model of at least 2 layers (this one has "
                               f"{n_layers}): exit_layer k drafts with layers 1..k and layers k+1..L verify")
    k = _as_int(exit_layer)
    if k is None or not 1 <= k <= n_layers - 1:
        raise ValueError(f"exit_layer must be an int in 1..{n_layers - 1} for this {n_layers}-layer model, "
                         f"got {exit_layer!r}")
    new_budget = _as_int(max_new_tokens)
    if new_budget is None or new_budget < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    max_new_tokens = new_budget
    if _as_int(max_draft_tokens) is None or max_draft_tokens < 0:
        raise ValueError(f"max_draft_tokens must be an int >= 0, got {max_draft_tokens!r}")
    max_draft_tokens = _as_int(max_draft_tokens)
    if not 0.0 <= confidence_threshold <= 1.0:
        raise ValueError(f"confidence_threshold must be in [0, 1], got {confidence_threshold!r}")
    device = next(model.parameters()).device
    ids = torch.as_tensor(input_ids, device=device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape (1, T) (batch size 1 only), got {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise ValueError("input_ids must hold at least one token")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise ValueError(f"input_ids must hold integer token ids, got {ids.dtype}")
    ids = ids.long()
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= stack.vocab:
        raise ValueError(f"input_ids must be token ids in 0..{stack.vocab - 1} (the model's vocabulary), got "
                         f"{lo if lo < 0 else hi}")
    eos = _eos_set(model, eos_token_id)
    n_pad = _padding(model, ids, attention_mask, eos)
    padded, ids = ids, ids[:, n_pad:]  # decode the prompt without its left padding; .sequences keeps it
    prompt = ids.shape[1]
    total = prompt + max_new_tokens
    if stack.max_positions is not None and total > stack.max_positions + 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} with a {prompt}-token prompt exceeds the model's "
                         f"{stack.max_positions} positions (at most {stack.max_positions + 1 - prompt} new tokens)")
    gen_config, applied = _generation_settings(model)
    processors = None
    if applied:
        mask = torch.cat([padded.new_zeros(1, n_pad), padded.new_ones(1, prompt)], 1)
        processors = _processors(model, gen_config, eos, padded, mask, max_new_tokens)
    pads: list[int] = padded[0, :n_pad].tolist()

    def scores(logits: torch.Tensor, upto: list[int]) -> torch.Tensor:
        """One position's logits as model.generate picks from them: float32, through the logits processors
        given the sequence before it (the padding, the prompt and the tokens up to it)."""
        logits = logits.float()[None]
        if processors is not None:
            logits = processors(torch.tensor([pads + upto], dtype=torch.long, device=device), logits.clone())
        return logits[0]

    rows = None if draft_vocab is None else _draft_rows(draft_vocab, stack.vocab, device)
    training = model.training
    adapter_training = exit_adapter.training if exit_adapter is not None else False
    model.eval()
    if exit_adapter is not None:
        exit_adapter.eval()
    stack.set_draft(exit_adapter, rows)
    if costs is not None:
        costs.check(k, exit_adapter, rows)
    try:
        out = _decode(stack, ids, k, max_new_tokens, max_draft_tokens, confidence_threshold, eos, adaptive,
                      min_gain, scores if processors is not None else None, costs)
    finally:
        model.train(training)
        if exit_adapter is not None:
            exit_adapter.train(adapter_training)
    if n_pad:
        out.sequences = torch.cat([padded[:, :n_pad], out.sequences], 1)
        out.prompt_length += n_pad
    out.time_s = time.perf_counter() - t0
    return out


def _draft_rows(draft_vocab: Any, vocab: int, device: torch.device) -> torch.Tensor:
    rows = torch.as_tensor(draft_vocab, device=device)
    if rows.dim() != 1 or rows.numel() == 0 or rows.dtype.is_floating_point or rows.dtype == torch.bool:
        raise ValueError(f"draft_vocab must be a non-empty 1-d sequence of token ids, got shape "
                         f"{tuple(rows.shape)} of {rows.dtype}")
    rows = rows.long()
    if int(rows.min()) < 0 or int(rows.max()) >= vocab:
        bad = int(rows.min()) if int(rows.min()) < 0 else int(rows.max())
        raise ValueError(f"draft_vocab must hold token ids in 0..{vocab - 1} (the model's vocabulary), got {bad}")
    if rows.unique().numel() != rows.numel():
        raise ValueError("draft_vocab holds a token id twice")
    return rows


def draft_vocabulary(token_ids: torch.Tensor | Sequence[int], size: int, keep: Sequence[int] = ()) -> torch.Tensor:
    """The ``size`` most frequent ids of ``token_ids`` (your text, tokenized), plus ``keep`` (e.g. the EOS ids),
    for ``generate(draft_vocab=...)``: FR-Spec's frequency-ranked draft vocabulary
    (https://arxiv.org/abs/2502.14856). Ties in frequency go to the smaller id.

    Args:
        token_ids: token ids of representative text, any shape.
        size: how many of the most frequent ids to take (>= 1; fewer if fewer distinct ids occur).
        keep: ids always included (beyond ``size``).

    Example::

        ids = torch.tensor([5, 5, 5, 7, 7, 9])
        draft_vocabulary(ids, 2, keep=[0])  # tensor([0, 5, 7])
    """
    ids = torch.as_tensor(token_ids).reshape(-1)
    if _as_int(size) is None or size < 1:
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    if ids.numel() == 0 or ids.dtype.is_floating_point or ids.dtype == torch.bool or int(ids.min()) < 0:
        raise ValueError("token_ids must be a non-empty set of token ids (integers >= 0)")
    counts = torch.bincount(ids.long().cpu())
    order = torch.argsort(-counts, stable=True)  # most frequent first, smaller id first among equals
    top = order[:min(int(size), int((counts > 0).sum()))]
    return torch.unique(torch.cat([top, torch.as_tensor(list(keep), dtype=torch.long)]))


def _check_cache(cache: Any, layer: int, expected: int) -> None:
    got = cache.get_seq_length(layer)
    if got != expected:
        import transformers

        raise UnsupportedError(f"stimulative.lm.generate: layer {layer + 1}'s KV cache holds {got} positions "
                               f"after a forward over {expected} (the decoder layers of transformers "
                               f"{transformers.__version__} do not fill the cache as this decoder calls them; "
                               f"tested: transformers{TESTED_TRANSFORMERS}); {_ALTERNATIVE}")


def _decode(stack: _Stack, ids: torch.Tensor, k: int, max_new_tokens: int, max_draft_tokens: int,
            confidence_threshold: float, eos: set[int], adaptive: bool, min_gain: float,
            scores: Any, costs: DecodeCosts | None) -> SpeculativeOutput:
    from transformers import DynamicCache

    n_layers = len(stack.layers)
    shallow, deep = range(k), range(k, n_layers)
    prompt = ids.shape[1]
    total = prompt + max_new_tokens
    out = SpeculativeOutput(ids, prompt)
    tokens: list[int] = ids[0].tolist()
    cache = DynamicCache()
    done = max_new_tokens == 0

    def pick(logits: torch.Tensor, upto: list[int]) -> torch.Tensor:  # (vocab,) -> the scores greedy argmaxes
        return logits if scores is None else scores(logits, upto)

    # Invariant at the start of a round: every layer's cache holds positions 0 .. len(tokens) - 2 (all accepted
    # tokens but the last one: the previous round's bonus token), or nothing before the first round (the prompt).
    # The tokens after the cached positions have been through no layer yet.
    cost, verify = (_draft_cost(stack, k), (1.0,)) if costs is None else (costs.draft, costs.verify)
    agree = _PRIOR_AGREEMENT  # running estimate: P(draft token == full model's token | previous ones accepted)
    length = min(max_draft_tokens, _FIRST_LENGTH) if adaptive else max_draft_tokens  # this round's longest draft
    first = True
    while not done:
        n = len(tokens)
        cached = cache.get_seq_length()
        budget = total - n  # new tokens still allowed; a round yields at most (drafts + 1)
        m_max = min(max_draft_tokens, budget - 1)
        if adaptive and m_max > 0:
            m_max = min(m_max, length) if _drafting_pays(agree, cost, m_max, min_gain, verify) else 0
        # draft: the unprocessed tokens through the shallow stack, then one token at a time
        h = stack.run(stack.embed_at(ids.new_tensor([tokens[cached:]]), cached), shallow, cached, cache)
        if first:  # the layers must have filled the cache (else every later step would decode from nothing)
            _check_cache(cache, 0, n)
        pending = [h]  # layer-k hidden states of positions cached .. n - 1 + len(drafts)
        drafts: list[int] = []
        while len(drafts) < m_max:
            prob, tok = pick(stack.draft_logits(h[0, -1]), tokens + drafts).float().softmax(-1).max(-1)
            drafts.append(int(tok))
            # run the drafted token through layers 1..k now: the next draft step and the verification need it
            h = stack.run(stack.embed_at(tok[None, None], n + len(drafts) - 1), shallow, n + len(drafts) - 1,
                          cache)
            pending.append(h)
            if drafts[-1] in eos or float(prob) < confidence_threshold:
                break
        # a plain greedy step of the adaptive mode still reads the draft head (no extra layer pass) to see
        # whether the early exit agrees with the full model again
        watch = (int(pick(stack.draft_logits(h[0, -1]), tokens).argmax(-1))
                 if adaptive and m_max == 0 and max_draft_tokens and out.greedy_steps % _WATCH_EVERY == 0
                 else None)
        # verify: layers k+1..L on the layer-k states of positions cached .. n - 1 + m in one forward
        m = len(drafts)
        hd = stack.run(torch.cat(pending, 1), deep, cached, cache)
        if first:
            _check_cache(cache, n_layers - 1, n + m)
            first = False
        logits = stack.logits(hd[0, -(m + 1):])
        out.full_forwards += 1
        if scores is None:
            greedy = logits.argmax(-1).tolist()
            j = 0
            while j < m and drafts[j] == greedy[j]:
                j += 1
            bonus = greedy[j]
        else:  # the processors see the sequence before each position: only as far as the drafts were accepted
            j = 0
            while True:
                bonus = int(pick(logits[j], tokens + drafts[:j]).argmax(-1))
                if j == m or drafts[j] != bonus:
                    break
                j += 1
        if m:
            out.rounds += 1
            out.drafted += m
            out.accepted += j
            # every layer now holds positions 0 .. n - 1 + m; keep the accepted ones (0 .. n - 1 + j)
            if j < m:
                cache.crop(-(m - j))
            if adaptive:  # agreement comes in runs: longer drafts while they last, short ones after a miss
                length = min(max_draft_tokens, 2 * length) if j == m else max(1, j + 1)
            # what the round showed: j agreements, then a disagreement unless all were accepted
            for seen in [True] * j + [False] * (j < m):
                agree = _DECAY * agree + (1 - _DECAY) * seen
        else:
            out.greedy_steps += 1
            if watch is not None:
                agree = _DECAY * agree + (1 - _DECAY) * (watch == bonus)
        new = drafts[:j] + [bonus]
        for i, t in enumerate(new):
            if t in eos:
                new = new[:i + 1]
                done = True
                break
        tokens.extend(new)
        done = done or len(tokens) >= total
    out.sequences = torch.tensor([tokens], dtype=torch.long, device=ids.device)
    return out
