"""Stimulative training for decoder-only language models: token-level ST loss pieces and an offline corpus.

* ``TokenLogits`` / ``token_batch`` / ``next_token_targets`` / ``token_cross_entropy`` (``stimulative.core.tokens``): run
  ``st.StimulativeStep`` on token ids; main next-token CE and per-sub-network token-level KL (or KL-) to the
  detached full model, both averaged over the non-padding next-token positions.
* ``ByteTokenizer``, ``load_tokenizer``, ``corpus_files``, ``corpus_tokens``, ``split_by_file``, ``encode_files``, ``PackedBlocks``,
  ``stdlib_files`` (``stimulative.lm.data``): a byte-level tokenizer (no download), packed fixed-length blocks
  over a text file or a folder of text files split into train/val by file, and the Python standard library's
  own sources as a demo corpus.
* ``depth_losses`` (``stimulative.lm.evaluate``): validation loss/perplexity of every prefix depth inside one
  model (loafing by depth).
* ``generate``, ``SpeculativeOutput``, ``draft_vocabulary``, ``measure_decode_costs`` (``stimulative.lm.speculative``): greedy self-speculative decoding whose
  verification reuses the draft's work (equal to plain greedy; needs ``transformers`` when called).

Runs (import the submodules; they need ``transformers``):

* ``stimulative.lm.config``: ``LMConfig``, ``load_lm_config`` (a ``task: lm`` recipe); ``stimulative.lm.data``: the
  run's token streams (``load_lm_data``); ``stimulative.lm.model``: ``build_lm`` (the recipe's model,
  ``model.pretrained`` included); a trained run opens with ``stimulative.open_run(run_dir)`` (``run.model``,
  ``run.tokenizer``).
* ``stimulative.lm.train``: ``train_lm(recipe, overrides)`` trains/resumes a CT/ST/ST++/LayerSkip run: the LM task
  of the training engine (``stimulative.train``: run directory, lock, resume checks, checkpoints, optimizer and
  schedule, the step loop).
* ``stimulative.lm.loafing``: ``lm_loafing(runs, alone, out_dir)``: loss of every depth inside each run vs depth-k
  models trained alone (table and figure).
* ``stimulative.lm.export``: ``export_lm(run, k, out_dir)``: the first k layers as a ``save_pretrained`` directory.
* ``stimulative.lm.adapter``: an exit adapter on a frozen LM (``generate(exit_adapter=...)``).
* The command line is ``stimulative train|loafing|export|generate|convert`` (docs/lm.md); ``stimulative.open_run``
  opens an LM run like any other.

Models come from ``transformers`` (optional extra); their layers are found and cut by ``stimulative.hf``.
Nothing here imports ``transformers`` at import time.
"""

from ..core.tokens import IGNORE_INDEX, TokenLogits, next_token_targets, token_batch, token_cross_entropy
from .data import (
    ByteTokenizer,
    PackedBlocks,
    corpus_files,
    corpus_tokens,
    encode_files,
    load_tokenizer,
    split_by_file,
    stdlib_files,
)
from .evaluate import depth_losses
from .speculative import DecodeCosts, SpeculativeOutput, draft_vocabulary, generate, measure_decode_costs

__all__ = [
    "IGNORE_INDEX", "ByteTokenizer", "DecodeCosts", "PackedBlocks", "SpeculativeOutput", "TokenLogits", "corpus_files", "corpus_tokens", "depth_losses", "encode_files",
    "draft_vocabulary", "generate", "load_tokenizer", "measure_decode_costs", "next_token_targets", "split_by_file", "stdlib_files", "token_batch", "token_cross_entropy",
]
