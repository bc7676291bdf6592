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

The output is the plain greedy output of the full model (the same layers on the same keys/values; only the
grouping of positions in the deep stack's forward differs, so an exact tie between two logits could in
principle break the other way).

Adaptive fallback: a running estimate a of how often a drafted token agrees with the full model (over about
the last 10 drafted tokens seen) says whether drafting pays: whether some draft length m is expected to give
more tokens (1 + a + ... + a^m) per layer pass (m k + L) than plain greedy (1 per L), by ``min_gain``. Where
it does not, the round is a plain greedy step, which still reads the draft head on the layer-k state it
computes anyway, so the estimate keeps following the model and drafting resumes when the exits agree again.
A model whose early exits disagree with the full model (CT) is so decoded at about plain-greedy speed. The
longest draft of a round starts at 4 tokens, doubles (up to ``max_draft_tokens``) after a fully accepted round
and drops to j + 1 after a round whose first j drafts were accepted: agreement comes in runs; within a round
the draft's own confidence can end it earlier.

Batch size 1 only. Models: ``LlamaForCausalLM`` and ``GPT2LMHeadModel`` (and models with the same layout:
``model.model.{embed_tokens, layers, norm, rotary_emb}`` or ``model.transformer.{wte, wpe, h, ln_f}``), with
eager or SDPA attention, including the ones ``stimulative.lm.export`` writes::

    out = generate(model, torch.tensor([[1, 2, 3]]), exit_layer=2, max_new_tokens=64)
    out.sequences, out.acceptance, out.tokens_per_forward
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["generate", "SpeculativeOutput"]


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
    """The pieces of a supported causal LM: embeddings, layers (called directly), final norm, LM head."""

    def __init__(self, model: nn.Module):
        base = getattr(model, "model", None)
        if base is not None and all(hasattr(base, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
            self.family = "llama"
            self.embed, self.layers, self.norm, self.rotary = base.embed_tokens, base.layers, base.norm, base.rotary_emb
            self.wpe = None
        elif all(hasattr(getattr(model, "transformer", None), a) for a in ("wte", "wpe", "h", "ln_f")):
            self.family = "gpt2"
            t = model.transformer
            self.embed, self.layers, self.norm, self.wpe, self.rotary = t.wte, t.h, t.ln_f, t.wpe, None
        else:
            raise ValueError(f"model must be a LlamaForCausalLM or GPT2LMHeadModel (or the same layout), got "
                             f"{type(model).__name__}")
        self.head = model.get_output_embeddings()
        config = model.config
        self.impl = getattr(config, "_attn_implementation", None) or "eager"
        if self.impl not in ("eager", "sdpa"):
            raise ValueError(f"model attention implementation must be 'eager' or 'sdpa', got {self.impl!r}")
        layer_types = getattr(config, "layer_types", None)
        if layer_types and any(t != "full_attention" for t in layer_types):
            raise ValueError("model must use full attention in every layer (sliding-window layers are not supported)")
        if getattr(config, "add_cross_attention", False):
            raise ValueError("model must be a decoder-only LM without cross-attention")
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


_PRIOR_AGREEMENT = 0.5  # before anything is seen: enough to draft from an exit in the first 45% of the layers
_DECAY = 0.9  # per observed draft token: the estimate follows about the last 10 of them
_FIRST_LENGTH = 4  # the adaptive draft length starts here, doubles after a fully accepted round


def _drafting_pays(agree: float, k: int, layers: int, m_max: int, min_gain: float) -> bool:
    """Whether some draft length m <= m_max is expected to give ``min_gain`` times plain greedy's tokens per
    layer pass.

    A round with m drafts runs layers 1..k on m + 1 tokens and layers k+1..L once: m k + L layer passes, i.e.
    1 + m k / L full forwards, for 1 + a + ... + a^m tokens on average if each drafted token agrees with the
    full model with probability a (given that the previous ones did); plain greedy: 1 token per full forward.
    """
    tokens, term = 1.0, 1.0
    for m in range(1, m_max + 1):
        term *= agree
        tokens += term
        if tokens > min_gain * (1 + m * k / layers):
            return True
        if term < 1e-3:
            break
    return False


def _eos_set(model: nn.Module, eos_token_id: int | Sequence[int] | None) -> set[int]:
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, torch.Tensor):
        eos_token_id = eos_token_id.tolist()
    return {int(t) for t in (eos_token_id if isinstance(eos_token_id, (list, tuple, set)) else [eos_token_id])}


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor | Sequence[int], exit_layer: int, max_new_tokens: int = 128,
             *, max_draft_tokens: int = 16, confidence_threshold: float = 0.4,
             eos_token_id: int | Sequence[int] | None = None, adaptive: bool = True,
             min_gain: float = 1.1) -> SpeculativeOutput:
    """Greedy decoding of one prompt with drafts from the first ``exit_layer`` layers, verified by the rest.

    The result is token for token the plain greedy output of the full model (``model.generate(input_ids,
    do_sample=False, max_new_tokens=...)``), including stopping right after an EOS token; only the speed depends
    on how often the early exit agrees with the full model. Batch size 1 only.

    Args:
        model: a ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` (eager or SDPA attention); put in eval mode here.
        input_ids: the prompt, shape ``(1, T)`` or ``(T,)``, T >= 1.
        exit_layer: k, the draft's depth: the first k of the model's L layers, 1 <= k <= L - 1.
        max_new_tokens: at most this many new tokens.
        max_draft_tokens: at most this many drafted tokens per round (0: plain greedy with the same code).
        confidence_threshold: end a draft round after a token whose draft probability is below this (0: never).
        eos_token_id: stop after this token (or any of these); default ``model.generation_config.eos_token_id``.
        adaptive: take plain greedy steps while drafting does not pay off, judged from the running agreement
            of the early exit with the full model, and adapt the draft length to the recent rounds (see the
            module docstring); False: always draft up to ``max_draft_tokens``.
        min_gain: draft only where the estimated tokens per layer pass beat plain greedy's by this factor.

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
    from transformers import DynamicCache

    t0 = time.perf_counter()
    stack = _Stack(model)
    n_layers = len(stack.layers)
    if isinstance(exit_layer, bool) or not isinstance(exit_layer, int) or not 1 <= exit_layer <= n_layers - 1:
        raise ValueError(f"exit_layer must be an int in 1..{n_layers - 1} for this {n_layers}-layer model, "
                         f"got {exit_layer!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not isinstance(max_draft_tokens, int) or max_draft_tokens < 0:
        raise ValueError(f"max_draft_tokens must be an int >= 0, got {max_draft_tokens!r}")
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
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got {ids.dtype}")
    ids = ids.long()
    prompt = ids.shape[1]
    total = prompt + max_new_tokens
    if stack.max_positions is not None and total > stack.max_positions:
        raise ValueError(f"max_new_tokens={max_new_tokens} with a {prompt}-token prompt exceeds the model's "
                         f"{stack.max_positions} positions")
    eos = _eos_set(model, eos_token_id)
    model.eval()

    k, shallow, deep = exit_layer, range(exit_layer), range(exit_layer, n_layers)
    out = SpeculativeOutput(ids, prompt)
    tokens: list[int] = ids[0].tolist()
    cache = DynamicCache()
    done = max_new_tokens == 0
    # Invariant at the start of a round: every layer's cache holds positions 0 .. len(tokens) - 2 (all accepted
    # tokens but the last one: the previous round's bonus token), or nothing before the first round (the prompt).
    # The tokens after the cached positions have been through no layer yet.
    agree = _PRIOR_AGREEMENT  # running estimate: P(draft token == full model's token | previous ones accepted)
    length = min(max_draft_tokens, _FIRST_LENGTH) if adaptive else max_draft_tokens  # this round's longest draft
    while not done:
        n = len(tokens)
        cached = cache.get_seq_length()
        budget = total - n  # new tokens still allowed; a round yields at most (drafts + 1)
        m_max = min(max_draft_tokens, budget - 1)
        if adaptive and m_max > 0:
            m_max = min(m_max, length) if _drafting_pays(agree, k, n_layers, m_max, min_gain) else 0
        # draft: the unprocessed tokens through the shallow stack, then one token at a time
        h = stack.run(stack.embed_at(ids.new_tensor([tokens[cached:]]), cached), shallow, cached, cache)
        pending = [h]  # layer-k hidden states of positions cached .. n - 1 + len(drafts)
        drafts: list[int] = []
        while len(drafts) < m_max:
            logits = stack.logits(h[:, -1])
            prob, tok = logits.float().softmax(-1).max(-1)
            drafts.append(int(tok))
            # run the drafted token through layers 1..k now: the next draft step and the verification need it
            h = stack.run(stack.embed_at(tok[None], n + len(drafts) - 1), shallow, n + len(drafts) - 1, cache)
            pending.append(h)
            if drafts[-1] in eos or float(prob) < confidence_threshold:
                break
        # a plain greedy step of the adaptive mode still reads the draft head (no extra layer pass) to see
        # whether the early exit agrees with the full model again
        watch = int(stack.logits(h[:, -1]).argmax(-1)) if adaptive and m_max == 0 and max_draft_tokens else None
        # verify: layers k+1..L on the layer-k states of positions cached .. n - 1 + m in one forward
        m = len(drafts)
        hd = stack.run(torch.cat(pending, 1), deep, cached, cache)
        greedy = stack.logits(hd[:, -(m + 1):]).argmax(-1)[0].tolist()
        out.full_forwards += 1
        j = 0
        while j < m and drafts[j] == greedy[j]:
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
                agree = _DECAY * agree + (1 - _DECAY) * (watch == greedy[0])
        new = drafts[:j] + [greedy[j]]
        for i, t in enumerate(new):
            if t in eos:
                new = new[:i + 1]
                done = True
                break
        tokens.extend(new)
        done = done or len(tokens) >= total
    out.sequences = torch.tensor([tokens], dtype=torch.long, device=device)
    out.time_s = time.perf_counter() - t0
    return out
