"""The ST step on tokens, through ``st.StimulativeStep``: next-token rows of a causal LM and their targets.

A batch is a ``(batch, time)`` tensor of token ids where padding positions hold ``IGNORE_INDEX`` (-100, the
``transformers`` label convention). ``TokenLogits(model)`` runs the causal LM on it (padding masked out of
attention, positions counted over real tokens) and returns the next-token logits of the valid positions
only: one row per (position t, real token at t and at t+1), shape ``(n_tokens, vocab)``, and
``next_token_targets(ids)`` the matching next tokens, shape ``(n_tokens,)``. The step takes the ids and the
targets as they are; its losses are then exactly the token-level ones. A sub-network of a decoder-only LM is a
prefix of its layers, so ``prefix_exits`` reads the sub-networks off the main forward (one forward and one
backward per step, same losses and gradients as separate passes)::

    ed = hf.elastic_depth(hf_model)                       # one stage of decoder layers
    tok = TokenLogits(hf_model)
    step = st.StimulativeStep(ed, st.SampleSpace.ordered(ed.full_depths, seed=0), num_subnets=2, kl_norm="layer",
                              model=tok, exits=hf.prefix_exits(ed, rows=tok.select_rows))
    losses = step(ids, next_token_targets(ids))            # backward inside; then optimizer.step()

* main: cross-entropy averaged over the valid next-token positions;
* every sub-network: ``subnet_loss`` on the same rows, i.e. the token-level KL (``kl_norm="plain"``) or KL-
  (``kl_norm="layer"``...) of the sub-network's next-token distribution to the detached full model's, averaged
  over the valid positions (``batchmean`` over rows).

Keep ``min_input_scale=1.0`` (the step's random resize is for images) and ``subnet_fraction=1.0``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IGNORE_INDEX", "TokenLogits", "model_inputs", "next_token_targets", "token_batch",
           "token_cross_entropy", "valid_next_token_mask"]

IGNORE_INDEX = -100


def valid_next_token_mask(ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(batch, time - 1)`` bool: position t predicts a real token from a real token."""
    real = ids != ignore_index
    return real[:, :-1] & real[:, 1:]


def model_inputs(ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, dict[str, Any]]:
    """What a causal LM is called with for a batch with ``ignore_index`` padding: the ids with padding as 0, and
    (only when there is padding) its ``attention_mask`` and the ``position_ids`` that skip the padding."""
    real = ids != ignore_index
    if bool(real.all()):
        return ids, {}
    mask = real.long()
    return ids.masked_fill(~real, 0), {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp_min(0)}


def next_token_targets(ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The next tokens of the valid positions, in the row order of ``TokenLogits``: shape ``(n_tokens,)``."""
    if ids.dim() != 2:
        raise ValueError(f"token ids must be (batch, time), got shape {tuple(ids.shape)}")
    return ids[:, 1:][valid_next_token_mask(ids, ignore_index)]


def token_batch(ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` for ``StimulativeStep`` on a ``(batch, time)`` batch of ids: the ids themselves and the next
    tokens of the valid positions (``next_token_targets``); an error when no position has two real tokens."""
    y = next_token_targets(ids, ignore_index)
    if y.numel() == 0:
        raise ValueError("the batch has no next-token position with two real tokens")
    return ids, y


def token_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Main-loss ``criterion=`` for ``StimulativeStep``: CE of ``TokenLogits`` rows against either the flat
    targets of ``next_token_targets`` or the ``(batch, time)`` ids themselves (shifted and masked here), with
    optional label smoothing (``functools.partial(token_cross_entropy, label_smoothing=0.1)``)."""
    if target.dim() == 2:
        target = next_token_targets(target, ignore_index)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


class TokenLogits(nn.Module):
    """``TokenLogits(model)(ids)``: next-token logits of the valid positions, ``(n_tokens, vocab)``.

    Args:
        model: a causal LM called as ``model(input_ids, attention_mask=..., position_ids=..., use_cache=False)``
            returning ``.logits`` (a ``transformers`` model, its DDP wrapper, or ``hf.Logits``), or a module
            returning the ``(batch, time, vocab)`` logits tensor itself.
        ignore_index: the id that marks padding in the batch.

    Padded batches (left or right padding) get an attention mask and positions counted over real tokens;
    batches without padding (packed blocks) are run without either (the model's fast causal path).
    """

    def __init__(self, model: nn.Module, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.model = model
        self.ignore_index = ignore_index

    def forward(self, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"token ids must be (batch, time), got shape {tuple(ids.shape)}")
        tokens, padding = model_inputs(ids, self.ignore_index)
        for key, value in padding.items():
            kwargs.setdefault(key, value)
        kwargs.setdefault("use_cache", False)
        out = self.model(tokens, **kwargs)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        return self.select_rows(logits, ids)

    def select_rows(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The rows of the valid next-token positions of ``(batch, time, vocab)`` logits of ``ids`` (the exits of
        ``prefix_exits`` go through it, so they have the rows of the full model's output)."""
        return logits[:, :-1][valid_next_token_mask(ids, self.ignore_index)]
