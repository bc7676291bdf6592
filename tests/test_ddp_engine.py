"""DDP (gloo, 2 CPU processes via torchrun) trains exactly like one process on the same global batch.

Why a ViT: with BatchNorm each DDP process normalises with the statistics of its half of the batch, so the
losses of a 2-process run legitimately differ from one process on the whole batch. A ViT uses LayerNorm, which
is per sample, so every per-sample output, the batch-mean losses and the averaged gradients agree; the only
difference left is float32 summation order (per-process means averaged by the all-reduce vs one mean), about
1e-7 relative per step. After 8 SGD steps with ST on (2 sub-networks per step, blocks skipped, so DDP's
``find_unused_parameters`` and the ``no_sync`` order of ``StimulativeStep`` are exercised) we allow 1e-5
relative on the per-epoch losses and 1e-4 absolute on the weights. The sub-networks learn from the labels
(``st.loss=ce``) so their gradients are as large as the main network's (a freshly initialised ViT's
sub-networks agree with it almost exactly, which makes the KL term and its gradient tiny): a wrong
sub-network sync shows up. Checked: giving each process its own sampler seed fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import stimulative.train.engine as engine
from stimulative.io import read_jsonl as read_metrics
from stimulative.train.checkpoint import load_checkpoint
from stimulative.train.config import load_config
from stimulative.train.model import build_model

VIT = "{img_size: 16, patch_size: 4, depth: 3, embed_dim: 32, num_heads: 2}"


def overrides(out_dir, name: str) -> list[str]:
    return ["data.name=synthetic", "data.input_size=16", "data.augment=none", "data.train_subset=64",
            "data.test_subset=32", "batch_size=16", "eval_batch_size=32", "epochs=2", "eval_every=10",
            "model.name=timm/vit_tiny_patch16_224", f"model.kwargs={VIT}", "st.num_subnets=2", "st.loss=ce", "optim.lr=0.05",
            "optim.warmup_epochs=0.5", "device=cpu", "threads=1", f"out_dir={out_dir}", f"name={name}"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_ddp_equals_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stimulative", "train", *overrides(tmp_path, "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # only rank 0 prints and writes
    assert proc.stdout.count("writing the run to") == 1
    assert "x2" in proc.stdout  # the start line reports the 2 processes

    engine.train(load_config(None, overrides(tmp_path, "single")))

    ddp_metrics = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    one_metrics = read_metrics(tmp_path / "single" / "metrics.jsonl")
    assert [r["step"] for r in ddp_metrics] == [r["step"] for r in one_metrics] == [4, 8]
    for a, b in zip(ddp_metrics, one_metrics):
        assert a["train_loss_main"] == pytest.approx(b["train_loss_main"], rel=1e-5)
        assert a["train_loss_subnet"] == pytest.approx(b["train_loss_subnet"], rel=1e-5)
        assert a["train_acc"] == b["train_acc"]
    assert ddp_metrics[-1]["train_loss_subnet"] > 0
    ddp_w, one_w = load_checkpoint(tmp_path / "ddp" / "last.pt")["model"], load_checkpoint(
        tmp_path / "single" / "last.pt")["model"]
    init = load_checkpoint(tmp_path / "single" / "last.pt")
    assert init["step"] == 8
    for key in one_w:
        torch.testing.assert_close(ddp_w[key], one_w[key], atol=1e-4, rtol=0, msg=key)
    # the weights did move: the comparison is not between two untouched initialisations
    torch.manual_seed(0)
    fresh = build_model(load_config(None, overrides(tmp_path, "x")), 10).state_dict()
    assert max((fresh[k] - one_w[k]).abs().max().item() for k in one_w) > 1e-2
