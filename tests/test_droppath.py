"""Stochastic depth and LayerDrop (core.droppath): the schedules, the measured drop fraction of every block, identity
at eval, determinism under a seed, BN re-estimation without drops, the recipe keys, and exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from test_engine import STEPS_PER_EPOCH, assert_same_state, tiny_config

import stimulative as st
import stimulative.train.engine as engine
from stimulative.core.droppath import drop_path_paused, drop_path_rates, set_drop_path
from stimulative.train.checkpoint import load_checkpoint
from stimulative.train.config import ConfigError

torch.set_num_threads(1)


def test_schedules():
    assert drop_path_rates(4, 0.5, "linear") == pytest.approx([0.125, 0.25, 0.375, 0.5])  # Huang et al.: p_l = p l/L
    assert drop_path_rates(3, 0.2, "uniform") == [0.2, 0.2, 0.2]                           # LayerDrop
    exp = drop_path_rates(5, 0.1, "exponential")                                          # LayerSkip's D(l)
    assert exp[0] == 0.0 and exp[-1] == pytest.approx(0.1)
    assert exp[2] == pytest.approx(0.1 * (math.sqrt(2) - 1))
    assert all(a < b for a, b in zip(exp, exp[1:]))


@pytest.mark.parametrize("bad", [dict(schedule="cosine"), dict(p=1.0), dict(p=-0.1)])
def test_bad_schedule_or_rate_is_refused(bad):
    kwargs = {"num_blocks": 3, "p": 0.2, "schedule": "linear", **bad}
    with pytest.raises(ValueError, match="linear" if "schedule" in bad else "rate"):
        drop_path_rates(**kwargs)


def _tiny():
    torch.manual_seed(0)
    model = st.create_model("cifar_resnet_tiny", num_classes=10)
    return model, st.ElasticDepth(model)


def test_measured_drop_fraction_matches_the_schedule():
    """A dropped sample leaves its block unchanged (output == input); count them per block over 3,000 samples."""
    model, ed = _tiny()
    rates = set_drop_path(ed, 0.6, "linear")
    blocks = [b for s in ed.stages for b in s.blocks]
    seen: dict[int, float] = {}

    def hook(i):
        def fn(module, inputs, out):
            x = inputs[0]
            same = (out == x).flatten(1).all(1) if out.shape == x.shape else torch.zeros(len(x), dtype=torch.bool)
            seen[i] = same.float().mean().item()
        return fn

    handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        model(torch.randn(3000, 3, 16, 16))
    for h in handles:
        h.remove()
    for i, rate in enumerate(rates):
        tol = 4 * math.sqrt(max(rate * (1 - rate), 0.01) / 3000)
        assert seen[i] == pytest.approx(rate, abs=tol), (i, seen[i], rate)
    assert rates[2] == 0.0  # the first block of stage 2 changes shape: never dropped
    assert max(rates) == pytest.approx(0.6)


def test_identity_at_eval_and_deterministic_under_a_seed():
    model, ed = _tiny()
    x = torch.randn(16, 3, 16, 16)
    model.eval()
    plain = model(x)
    set_drop_path(ed, 0.5, "uniform")
    assert torch.equal(model(x), plain)  # eval mode: the plain network
    model.train()
    outs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        with torch.no_grad(), st.frozen_bn_stats(model):
            outs.append(model(x))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])
    set_drop_path(ed, 0.0)
    with torch.no_grad(), st.frozen_bn_stats(model):
        assert torch.allclose(model(x), model(x))  # rate 0: no randomness left


def test_bn_reestimation_and_gradients_with_drops():
    model, ed = _tiny()
    batches = [torch.randn(32, 3, 16, 16) for _ in range(2)]
    st.recalibrate_bn(model, batches, 64)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    set_drop_path(ed, 0.5, "uniform")
    st.recalibrate_bn(model, batches, 64)  # drops paused: the same statistics
    assert_same_state(want, model.state_dict())
    with drop_path_paused(model):
        assert all(b.__dict__.get("_st_drop", 0.0) == 0.0 for b in model.modules())
    assert ed.stages[0].blocks[1].bn2._st_drop == 0.5  # restored (post-activation block: the drop is on bn2)
    model.train()
    torch.manual_seed(0)
    model(batches[0]).sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # dropped samples still reach every block


def test_hf_layers_drop_in_train_mode_only():
    transformers = pytest.importorskip("transformers")
    from stimulative.hf import elastic_depth

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    hf = transformers.LlamaForCausalLM(cfg)
    ed = elastic_depth(hf)
    ids = torch.randint(0, 64, (64, 5))
    hf.eval()
    with torch.no_grad():
        plain = ed.model(ids, use_cache=False)
        set_drop_path(ed, 0.99, "uniform")
        assert torch.equal(ed.model(ids, use_cache=False), plain)
        hf.train()
        with ed.depth([(1, 1, 1, 1)]):
            # every layer dropped for almost every sample: the logits are the embeddings' through norm + head
            dropped = ed.model(ids, use_cache=False)
        with ed.depth([(1, 0, 0, 0)]), drop_path_paused(hf):
            hf.eval()
            first_only = ed.model(ids, use_cache=False)
    assert not torch.allclose(dropped, plain)
    assert not torch.allclose(dropped, first_only)  # at 0.99 some layer still runs for some sample, not all


def test_recipe_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="model.drop_path"):
        tiny_config(tmp_path, "x", "model.drop_path=1.5")
    with pytest.raises(ConfigError, match="model.drop_path_schedule"):
        tiny_config(tmp_path, "x", "model.drop_path_schedule=cosine")


DROP = ["model.drop_path=0.5", "st.num_subnets=1", "bn_recal_images=32", "eval_depths=[[1,1,1]]"]


def test_engine_uses_the_rates_and_resume_is_exact(tmp_path):
    engine.train(tiny_config(tmp_path, "full", "epochs=2", *DROP))
    engine.train(tiny_config(tmp_path, "plain", "epochs=2", *DROP[1:]))
    cut = STEPS_PER_EPOCH + 2
    engine.train(tiny_config(tmp_path, "cut", "epochs=2", f"max_steps={cut}", *DROP))
    engine.train(tiny_config(tmp_path, "cut", "epochs=2", "resume=auto", *DROP))
    full, cut_ = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert_same_state(full["model"], cut_["model"])
    plain = load_checkpoint(tmp_path / "plain" / "last.pt")
    assert not torch.equal(full["model"]["conv1.weight"], plain["model"]["conv1.weight"])  # the drops acted


def test_without_scale_by_keep_a_kept_block_is_unchanged():
    """LayerSkip's layer dropout: a sample either skips the block or gets its plain output (no 1 / (1 - p))."""
    model, ed = _tiny()
    block = ed.stages[0].blocks[1]
    x = torch.relu(torch.randn(200, 8, 16, 16))  # a block's input follows a ReLU
    model.train()
    with torch.no_grad(), st.frozen_bn_stats(model):
        plain = block(x)
        set_drop_path(ed, 0.5, "uniform", scale_by_keep=False)
        torch.manual_seed(0)
        out = block(x)
        set_drop_path(ed, 0.5, "uniform")
        torch.manual_seed(0)
        scaled = block(x)
        with drop_path_paused(model):  # the branch of this post-activation block, as it is
            f = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    dropped = (out == x).flatten(1).all(1)
    assert 60 < int(dropped.sum()) < 140
    assert torch.equal(out[~dropped], plain[~dropped])
    assert torch.equal(scaled[dropped], x[dropped])
    # Huang et al. on a post-activation block: relu(x + f / (1 - p)), never the increment relu(x + f) - x scaled
    torch.testing.assert_close(scaled[~dropped], torch.relu(x + 2 * f)[~dropped])
    assert bool((scaled >= 0).all())


@pytest.mark.parametrize("name", ["resnet18", "timm/resnet18", "timm/seresnet18"])
def test_branch_end_of_post_activation_resnets(name):
    from stimulative.core.droppath import branch_end

    model = st.create_model(name, num_classes=10)
    ed = st.ElasticDepth(model)
    block = ed.stages[0].blocks[1]
    end = branch_end(block)
    assert end is (block.se if getattr(block, "se", None) is not None else block.bn2)
    vit = st.ElasticDepth(st.create_model("timm/vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8))
    assert branch_end(vit.stages[0].blocks[0]) is None  # x + f(x): the increment


def test_extract_and_remove_leave_no_drop_path():
    model, ed = _tiny()
    set_drop_path(ed, 0.5, "uniform")
    small = ed.extract([1, 1, 1])
    assert not any(k.startswith("_st_drop") for m in small.modules() for k in m.__dict__)
    ed.remove()
    assert not any(k.startswith("_st_drop") for m in model.modules() for k in m.__dict__)
    assert not any(m._forward_hooks for m in model.modules())


def test_explicit_rates_are_checked():
    _, ed = _tiny()
    n = sum(len(s.blocks) for s in ed.stages)
    with pytest.raises(ValueError, match="rate"):
        set_drop_path(ed, 0.0, rates=[1.0] * n)


@pytest.mark.parametrize("name, kwargs, size", [
    ("resnet18", {}, 32), ("timm/resnet18", {}, 32), ("mobilenet_v3_small", {}, 32),
    ("timm/vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, 32), ("timm/convnext_atto", {}, 32),
])
def test_every_family_drops_in_train_mode_and_is_plain_at_eval(name, kwargs, size):
    torch.manual_seed(0)
    model = st.create_model(name, num_classes=10, **kwargs)
    for m in model.modules():  # timm zero-initialises the last BN of a branch: make every branch matter
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    ed = st.ElasticDepth(model)
    x = torch.randn(4, 3, size, size)
    model.eval()
    with torch.no_grad():
        plain = model(x)
        rates = set_drop_path(ed, 0.9, "uniform")
        assert torch.equal(model(x), plain)
        assert len(rates) == sum(len(s.blocks) for s in ed.stages) and max(rates) == 0.9
        model.train()
        with st.frozen_bn_stats(model), drop_path_paused(model):
            torch.manual_seed(1)
            undropped = model(x)
        with st.frozen_bn_stats(model):
            torch.manual_seed(1)
            dropped = model(x)
    assert not torch.allclose(dropped, undropped)


def test_a_frozen_batchnorm_does_not_turn_the_drop_off():
    """The block's mode decides (a user may keep BatchNorm in eval while training)."""
    model, ed = _tiny()
    set_drop_path(ed, 0.9, "uniform")
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        b = model(x)
    assert not torch.allclose(a, b)


# ---- per-batch mode (issue 30): the compute-saving stochastic depth / LayerDrop -------------------------------


def _count_forwards(blocks):
    calls = [0] * len(blocks)

    def hook(i):
        def fn(module, inputs):
            calls[i] += 1
        return fn

    return calls, [b.register_forward_pre_hook(hook(i)) for i, b in enumerate(blocks)]


def test_batch_mode_skips_the_computation_at_the_scheduled_rate():
    """A dropped block runs no forward: its inner modules are never called. Over 2,000 forwards each block runs
    in a fraction 1 - p_l of them, and the expected depth is the schedule's."""
    model, ed = _tiny()
    rates = set_drop_path(ed, 0.6, "linear", mode="batch")
    blocks = [b for s in ed.stages for b in s.blocks]
    inner = [b.conv1 for b in blocks]  # the block's own computation, not the gated wrapper
    calls, handles = _count_forwards(inner)
    model.train()
    torch.manual_seed(0)
    n = 2000
    with torch.no_grad(), st.frozen_bn_stats(model):
        for _ in range(n):
            model(torch.randn(2, 3, 8, 8))
    for h in handles:
        h.remove()
    for i, rate in enumerate(rates):
        tol = 4 * math.sqrt(max(rate * (1 - rate), 0.01) / n)
        assert 1 - calls[i] / n == pytest.approx(rate, abs=tol), (i, calls[i], rate)
    depth = sum(calls) / n
    assert depth == pytest.approx(sum(1 - r for r in rates), abs=0.1)
    model.eval()
    calls, handles = _count_forwards(inner)
    with torch.no_grad():
        model(torch.randn(2, 3, 8, 8))
    assert calls == [1] * len(blocks)  # eval: every block runs


def test_batch_mode_drops_the_whole_batch_and_scales_a_kept_block():
    """One draw for all samples: every sample of a batch skips the block or none does; a kept post-activation
    block gives relu(x + f(x) / (1 - p)), f its branch in train mode."""
    model, ed = _tiny()
    n_blocks = sum(s.depth for s in ed.stages)
    block = ed.stages[0].blocks[1]
    x = torch.relu(torch.randn(64, 8, 16, 16))  # a block's input follows a ReLU
    captured = {}
    handle = block.bn2.register_forward_hook(lambda m, i, out: captured.__setitem__("f", out.clone()))
    model.train()
    with torch.no_grad(), st.frozen_bn_stats(model):
        block(x)  # no rate yet: the plain train-mode branch
        handle.remove()
        want_kept = torch.relu(x + captured["f"] / (1 - 0.5))
        set_drop_path(ed, 0.0, rates=[0.5 if i == 1 else 0.0 for i in range(n_blocks)], mode="batch")
        seen = set()
        for seed in range(20):
            torch.manual_seed(seed)
            out = block(x)
            if torch.equal(out, x):
                seen.add("dropped")
            else:
                torch.testing.assert_close(out, want_kept)  # kept for every sample, rescaled
                seen.add("kept")
    assert seen == {"dropped", "kept"}


def test_batch_mode_a_skipped_block_gets_no_gradient():
    model, ed = _tiny()
    set_drop_path(ed, 0.0, rates=[0.99 if i == 1 else 0.0 for i in range(sum(s.depth for s in ed.stages))],
                  mode="batch")
    skipped = ed.stages[0].blocks[1]
    model.train()
    torch.manual_seed(0)
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    assert all(p.grad is None for p in skipped.parameters())
    assert all(p.grad is not None for p in ed.stages[0].blocks[0].parameters())
    with drop_path_paused(model):  # BN re-estimation: nothing is skipped
        assert skipped.__dict__.get("_st_drop_batch", 0.0) == 0.0
    assert skipped._st_drop_batch == pytest.approx(0.99)


def test_removable_only_spreads_the_schedule_over_the_blocks_sub_networks_remove():
    torch.manual_seed(0)
    model = st.create_model("cifar_resnet20", num_classes=10)
    ed = st.ElasticDepth(model)
    rates = set_drop_path(ed, 0.5, "linear", mode="batch", removable_only=True)
    # [3, 3, 3] blocks, minimum depth 1: blocks 2-3 of every stage, 6 in all, p_l = 0.5 l / 6
    assert rates == pytest.approx([0, 0.5 / 6, 1 / 6, 0, 0.25, 2 / 6, 0, 2.5 / 6, 0.5])
    assert set_drop_path(ed, 0.2, "uniform", removable_only=True) == pytest.approx([0, .2, .2] * 3)
    with pytest.raises(ValueError, match="removable"):
        set_drop_path(ed, 0.0, rates=[0.1] * 9, removable_only=True)
    with pytest.raises(ValueError, match="sample"):
        set_drop_path(ed, 0.1, mode="row")


def test_batch_mode_in_the_engine_is_seeded_and_checked(tmp_path):
    with pytest.raises(ConfigError, match="model.drop_path_mode"):
        tiny_config(tmp_path, "x", "model.drop_path_mode=row")
    keys = ["epochs=1", "model.drop_path=0.5", "model.drop_path_mode=batch", "model.drop_path_removable_only=true",
            "bn_recal_images=32", "eval_depths=[[1,1,1]]"]
    engine.train(tiny_config(tmp_path, "a", *keys))
    engine.train(tiny_config(tmp_path, "b", *keys))
    engine.train(tiny_config(tmp_path, "c", *keys[:2]))
    a, b = (load_checkpoint(tmp_path / n / "last.pt")["model"] for n in "ab")
    c = load_checkpoint(tmp_path / "c" / "last.pt")["model"]
    assert_same_state(a, b)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
