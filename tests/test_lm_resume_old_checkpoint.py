"""A checkpoint written by the LM code before the engine refactor (commit 7f3feb8, ``lm/train.py``'s own
checkpoint format) still resumes under today's code, to the same final loss as an uninterrupted run.

The fixture ``fixtures/lm_run_7f3feb8`` is that code's run directory after 2 of 4 steps, made with
``git worktree add /tmp/old7f 7f3feb8`` and
``PYTHONPATH=/tmp/old7f/src python -m stimulative train recipes/lm_llama_st.yaml name=r out_dir=DIR steps=4
max_steps=2`` plus the overrides of ``ARGS`` below, on ``test_lm_train.text_folder`` (its config keeps the old
option name ``st.kl``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from test_lm_train import REPO, text_folder  # noqa: E402

from stimulative.lm.train import train_lm  # noqa: E402

torch.set_num_threads(1)
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lm_run_7f3feb8"
ARGS = ["steps=4", "eval_every=2", "model.hidden_size=16", "model.intermediate_size=32", "model.num_hidden_layers=2",
        "model.num_attention_heads=2", "model.num_key_value_heads=2", "model.context=16", "eval_depths=[1]",
        "data.val_blocks=2", "batch_size=2", "eval_batch_size=2", "optim.warmup_steps=1", "threads=1", "device=cpu"]


def test_pre_engine_lm_checkpoint_resumes_to_the_uninterrupted_loss(tmp_path):
    text = text_folder(tmp_path / "text")
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURE, runs / "r")
    assert torch.load(runs / "r" / "last.pt", weights_only=True)["step"] == 2
    with pytest.warns(DeprecationWarning, match="st.kl"):  # the old name of st.kl_norm
        resumed = train_lm(runs / "r" / "config.yaml", [f"out_dir={runs}", f"data.root={text}", "resume=auto",
                                                        "max_steps=0"])
    full = train_lm(REPO / "recipes/lm_llama_st.yaml", ["name=full", f"out_dir={runs}", f"data.root={text}", *ARGS])
    assert resumed["step"] == full["step"] == 4
    assert resumed["final"]["val_loss"] == pytest.approx(full["final"]["val_loss"], abs=1e-6)
