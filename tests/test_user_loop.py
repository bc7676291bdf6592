"""A user's own training loop gets the recipe's ST schedule from ``StimulativeStep.from_config(cfg.st, ed)`` and
``step.set_epoch(epoch, epochs)``: same losses and same weights as ``stimulative train`` for the same seed."""

from __future__ import annotations

import pytest
import torch

import stimulative as st
from stimulative.data import build_data
from stimulative.io import read_jsonl
from stimulative.train import load_checkpoint, train

EPOCHS = 3


def recipe(tmp_path) -> st.Config:
    # start_epoch=1 and cosine_up: epoch 1 trains no sub-network, then lambda = 0.25 and 0.75; smaller inputs
    # and KL- make the step's own generator and the sampler matter
    return st.load_config(None, [
        "data.name=synthetic", "data.input_size=16", "data.train_subset=64", "data.test_subset=32",
        "model.name=cifar_resnet_tiny", "batch_size=32", "eval_batch_size=32", f"epochs={EPOCHS}", "eval_every=100",
        "threads=1", "device=cpu", "seed=3", f"out_dir={tmp_path}", "name=engine",
        "optim.lr=0.05", "optim.schedule=constant", "optim.no_decay_bn_bias=false",
        "st.num_subnets=2", "st.kl_norm=layer", "st.amplitude=adaptive", "st.min_input_scale=0.75",
        "st.kl_schedule=cosine_up", "st.start_epoch=1", "st.kl_weight=2.0"])


def hand_loop(cfg: st.Config) -> tuple[torch.nn.Module, list[dict]]:
    """What a user writes around the library: their own data loop, model, optimizer and bookkeeping."""
    data = build_data(cfg.data, cfg.batch_size, cfg.eval_batch_size, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = st.create_model(cfg.model.name, num_classes=data.num_classes)
    ed = st.ElasticDepth(model)
    step = st.StimulativeStep.from_config(cfg.st, ed, space_seed=cfg.seed, seed=cfg.seed + 1)
    o = cfg.optim
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                weight_decay=o.weight_decay)
    records = []
    for epoch in range(cfg.epochs):
        data.train.set_epoch(epoch)
        step.set_epoch(epoch, cfg.epochs)
        model.train()
        main = sub = seen = 0.0
        for x, y in data.train:
            losses = step(x, y)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            main, sub, seen = main + losses["main"] * len(y), sub + losses["subnet"] * len(y), seen + len(y)
        records.append({"kl_weight": step.active_kl_weight, "train_loss_main": main / seen,
                        "train_loss_subnet": sub / seen})
    return model, records


def test_own_loop_with_from_config_and_set_epoch_matches_the_engine(tmp_path):
    cfg = recipe(tmp_path)
    train(cfg)
    engine_records = read_jsonl(tmp_path / "engine" / "metrics.jsonl")
    engine_weights = load_checkpoint(tmp_path / "engine" / "last.pt")["model"]

    model, records = hand_loop(cfg)

    assert [r["kl_weight"] for r in records] == pytest.approx([0.0, 0.25 * 2.0, 0.75 * 2.0])
    assert records[0]["train_loss_subnet"] == 0 and records[1]["train_loss_subnet"] > 0
    for mine, theirs in zip(records, engine_records, strict=True):
        for key, value in mine.items():
            assert value == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), key
    weights = model.state_dict()
    assert weights.keys() == engine_weights.keys()
    for name, value in weights.items():
        torch.testing.assert_close(value, engine_weights[name], rtol=1e-6, atol=1e-7, msg=name)
