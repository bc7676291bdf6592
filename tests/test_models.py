"""ElasticDepth on every supported model family, checked against hand-truncated copies.

Families (see conftest.FAMILIES): our CIFAR ResNets (option A and B shortcuts), torchvision resnet18 and
mobilenet_v3_small, timm resnet18 and a tiny timm ViT. The reference for a depth configuration is always a deep
copy of the unpatched model with the skipped blocks removed by hand, never ``ed.extract``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import NUM_CLASSES, batch, fresh_model

import stimulative as st
from stimulative.core.elastic import SKIP
from stimulative.models import CifarResNet

ATOL, RTOL = 1e-5, 1e-4


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=ATOL, rtol=RTOL)


def test_families_have_expected_stages(family):
    model = fresh_model(family)
    ed = st.ElasticDepth(model)
    assert ed.full_depths == family.full_depths
    assert ed.min_depths == [1] * len(family.full_depths)
    # the first block of a stage that changes shape is never skippable
    for stage in ed.stages[1:]:
        if family.name != "timm/vit_tiny_patch16_224":
            assert stage.skippable[0] is False, stage.name
        assert all(stage.skippable[1:]), stage.name


def test_depth_matches_hand_truncated_copy(family):
    model = fresh_model(family)
    pristine = copy.deepcopy(model)
    ed = st.ElasticDepth(model)
    x, _ = batch(2, family.input_size)
    with torch.no_grad():
        full = model(x)
        for depths in family.configs:
            reference = family.truncate(copy.deepcopy(pristine), depths).eval()
            expected = reference(x)
            with ed.depth(depths):
                got = model(x)
            assert _close(got, expected), (depths, (got - expected).abs().max())
            # and skipping blocks really changes the output (otherwise the comparison proves nothing)
            assert not _close(got, full), depths


def test_full_depth_equals_unwrapped_model(family):
    model = fresh_model(family)
    pristine = copy.deepcopy(model)
    ed = st.ElasticDepth(model)
    x, _ = batch(4, family.input_size, seed=1)
    with torch.no_grad():
        expected = pristine(x)
        assert _close(model(x), expected)
        with ed.depth(None):
            assert _close(model(x), expected)
        with ed.depth(ed.full_depths):
            assert _close(model(x), expected)
        # train mode (batch statistics; same dropout masks from the same seed) too
        model.train()
        pristine.train()
        torch.manual_seed(7)
        got = model(x)
        torch.manual_seed(7)
        assert _close(got, pristine(x))


def test_extract_equals_depth_context_and_is_smaller(family):
    model = fresh_model(family)
    ed = st.ElasticDepth(model)
    x, _ = batch(2, family.input_size, seed=2)
    n_full = sum(p.numel() for p in model.parameters())
    for depths in family.configs:
        sub = ed.extract(depths).eval()
        with torch.no_grad():
            with ed.depth(depths):
                expected = model(x)
            got = sub(x)
        assert _close(got, expected), depths
        assert sum(p.numel() for p in sub.parameters()) < n_full
        # the extracted model is plain: no gating class left, and it does not share weights with the original
        assert not any(hasattr(type(m), "_st_original_class") for m in sub.modules())
        assert all(p.data_ptr() != q.data_ptr() for p in sub.parameters() for q in model.parameters())


def test_state_dict_keys_unchanged(family):
    model = fresh_model(family)
    before = model.state_dict()
    st.ElasticDepth(model)
    after = model.state_dict()
    assert list(before) == list(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # and the patched model's weights load strictly into a plain model of the same family
    plain = family.build()
    plain.load_state_dict(after, strict=True)


def test_extract_loads_strictly_into_smaller_architecture(family):
    model = fresh_model(family)
    ed = st.ElasticDepth(model)
    x, _ = batch(2, family.input_size, seed=3)
    for depths in family.configs:
        sub = ed.extract(depths).eval()
        smaller = family.build_with(depths)
        smaller.load_state_dict(sub.state_dict(), strict=True)
        smaller.eval()
        with torch.no_grad():
            assert _close(smaller(x), sub(x)), depths


def test_full_depth_backward_reaches_every_parameter(family):
    model = fresh_model(family).train()
    st.ElasticDepth(model)
    x, y = batch(4, family.input_size, seed=4)
    out = model(x)
    assert out.shape == (4, NUM_CLASSES)
    assert torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, y).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_subnet_backward_skips_exactly_the_skipped_blocks(family):
    model = fresh_model(family).train()
    ed = st.ElasticDepth(model)
    depths = family.configs[0]
    x, y = batch(4, family.input_size, seed=5)
    with ed.depth(depths):
        out = model(x)
    assert out.shape == (4, NUM_CLASSES) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, y).backward()
    skipped = {id(p) for stage, row in zip(ed.stages, ed.block_modes(depths)) for block, mode in zip(stage.blocks, row)
               if mode == SKIP for p in block.parameters()}
    assert skipped, "the config should skip something"
    for p in model.parameters():
        assert (p.grad is None) == (id(p) in skipped)


@pytest.mark.parametrize("n", [3, 5])
def test_registry_builds_cifar_resnets(n):
    model = st.create_model(f"cifar_resnet{6 * n + 2}", num_classes=7)
    assert isinstance(model, CifarResNet) and model.blocks_per_stage == [n] * 3
    assert st.ElasticDepth(model).full_depths == [n, n, n]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert f"cifar_resnet{6 * n + 2}" in st.list_models()


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet_tiny"])
def test_cifar_builders_accept_blocks_per_stage(name):
    # what `stimulative loafing --train-alone` passes to train a (1,2,3) network alone
    model = st.create_model(name, num_classes=10, blocks_per_stage=[1, 2, 3])
    assert model.blocks_per_stage == [1, 2, 3] and len(model.layer3) == 3
    # a 1-block stage has nothing to skip, so ElasticDepth lists only the other two
    assert st.ElasticDepth(model).full_depths == [2, 3]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_create_model_errors():
    with pytest.raises(ValueError, match="unknown model"):
        st.create_model("no_such_model_xyz")
    with pytest.raises(ValueError, match="unknown timm model"):
        st.create_model("timm/no_such_model_xyz")
    with pytest.raises(ValueError, match="pretrained"):
        st.create_model("cifar_resnet20", pretrained=True)
    with pytest.raises(ValueError, match="shortcut"):
        st.create_model("cifar_resnet20", shortcut="C")

