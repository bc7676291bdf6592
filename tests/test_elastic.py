"""ElasticDepth: context restoration, validation errors, manual stage specs, unskippable blocks, raw/stochastic
configs (checked against hand-written forwards), extract/remove bookkeeping."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import batch, hand_forward_cifar, randomize_bn, truncate_layers
from torch import nn

import stimulative as st
from stimulative.core.elastic import BRANCH, RUN, SKIP


@pytest.fixture
def r20():
    torch.manual_seed(0)
    model = randomize_bn(st.create_model("cifar_resnet20", num_classes=10)).eval()
    pristine = copy.deepcopy(model)
    return model, st.ElasticDepth(model), pristine


def _all_run(ed) -> bool:
    return all(m == RUN for row in ed.current_modes() for m in row)


# ------------------------------------------------------------------------------------------------------------
# depth context restoration
# ------------------------------------------------------------------------------------------------------------

def test_depth_restored_after_exception_inside_context(r20):
    model, ed, pristine = r20
    x, _ = batch(2)
    with pytest.raises(RuntimeError, match="boom"):
        with ed.depth([1, 1, 1]):
            assert ed.current_modes()[0] == [RUN, SKIP, SKIP]
            raise RuntimeError("boom")
    assert _all_run(ed)
    with torch.no_grad():
        assert torch.allclose(model(x), pristine(x), atol=1e-6)


def test_depth_restored_after_forward_that_raises(r20):
    model, ed, _ = r20
    with pytest.raises(RuntimeError):
        with ed.depth([1, 2, 1]):
            model(torch.randn(2, 5, 32, 32))  # wrong channel count
    assert _all_run(ed)


def test_nested_depth_contexts_restore_outer_config(r20):
    model, ed, _ = r20
    with ed.depth([1, 1, 1]):
        outer = ed.current_modes()
        with pytest.raises(KeyError):
            with ed.depth([2, 3, 2]):
                assert ed.current_modes() != outer
                raise KeyError("inner")
        assert ed.current_modes() == outer
    assert _all_run(ed)


def test_invalid_config_leaves_state_untouched(r20):
    _, ed, _ = r20
    with ed.depth([2, 2, 2]):
        before = ed.current_modes()
        with pytest.raises(ValueError):
            with ed.depth([4, 1, 1]):
                pass
        assert ed.current_modes() == before
    assert _all_run(ed)


# ------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------

class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)),
    TinyCNN,
], ids=["sequential", "tiny_cnn"])
def test_model_without_residual_stage_is_rejected(make):
    with pytest.raises(ValueError, match="no residual stage"):
        st.ElasticDepth(make())


@pytest.mark.parametrize("name", ["timm/resnet10t", "cifar_resnet20"])
def test_one_block_per_stage_has_one_configuration(name):
    """A ResNet-8 (or timm's resnet10t) has nothing to skip: one configuration, so it can be trained alone."""
    kwargs = {"blocks_per_stage": 1} if name.startswith("cifar") else {}
    model = st.create_model(name, num_classes=10, **kwargs).eval()
    ed = st.ElasticDepth(model)
    assert ed.full_depths == ed.min_depths == [1] * ed.num_stages
    x = torch.randn(2, 3, 32, 32)
    with ed.depth(ed.full_depths), torch.no_grad():
        assert torch.equal(model(x), ed.extract(None)(x))
    with pytest.raises(ValueError, match="outside"):
        ed.block_modes([0] * ed.num_stages)


def test_depth_outside_range_names_valid_depths(r20):
    _, ed, _ = r20
    for bad in ([4, 1, 1], [1, 0, 1]):
        with pytest.raises(ValueError, match=r"valid depths are min \[1, 1, 1\] to max \[3, 3, 3\]"):
            ed.block_modes(bad)
        with pytest.raises(ValueError, match="outside"):
            with ed.depth(bad):
                pass


def test_wrong_number_of_stages_names_depths(r20):
    _, ed, _ = r20
    with pytest.raises(ValueError, match=r"3 stages with depths \[3, 3, 3\]"):
        ed.block_modes([1, 1])
    with pytest.raises(ValueError, match=r"3 stages"):
        ed.extract([1, 1, 1, 1])


def test_bad_block_modes_are_rejected(r20):
    _, ed, _ = r20
    full = (RUN, RUN, RUN)
    with pytest.raises(ValueError, match="layer2.0"):
        ed.block_modes([full, (SKIP, RUN, RUN), full])  # shape-changing block
    with pytest.raises(ValueError, match="layer3.0"):
        ed.block_modes([full, full, (BRANCH, RUN, RUN)])
    with pytest.raises(ValueError, match="3 blocks, got 2 modes"):
        ed.block_modes([full, (RUN, RUN), full])
    with pytest.raises(ValueError, match="block mode"):
        ed.block_modes([full, (RUN, 7, RUN), full])
    # the first block of layer1 keeps its shape (16 -> 16, stride 1) and MAY be skipped
    ed.block_modes([(SKIP, RUN, RUN), full, full])


def test_already_wrapped_model_is_rejected(r20):
    _, ed, _ = r20
    with pytest.raises(TypeError, match="already an ElasticDepth"):
        st.ElasticDepth(ed)


def test_parse_depths():
    assert st.parse_depths("3,3,3") == [3, 3, 3]
    assert st.parse_depths(" 1, 2 ,3 ") == [1, 2, 3]
    for bad in ("a,b", "", "1.5,2"):
        with pytest.raises(ValueError, match="comma-separated"):
            st.parse_depths(bad)


# ------------------------------------------------------------------------------------------------------------
# manual stage specs and unskippable blocks
# ------------------------------------------------------------------------------------------------------------

def test_manual_stage_names(r20):
    model, _, pristine = r20
    model = copy.deepcopy(pristine)
    ed = st.ElasticDepth(model, stages=["layer1", "layer2"])
    assert ed.full_depths == [3, 3] and [s.name for s in ed.stages] == ["layer1", "layer2"]
    x, _ = batch(2)
    reference = truncate_layers(copy.deepcopy(pristine), [1, 2, 3]).eval()
    with torch.no_grad(), ed.depth([1, 2]):
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    with pytest.raises(ValueError, match="not a submodule"):
        st.ElasticDepth(copy.deepcopy(pristine), stages=["layer9"])


def test_manual_block_list_across_a_shape_change_sets_min_depth(r20):
    _, _, pristine = r20
    model = copy.deepcopy(pristine)
    names = ["layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1"]
    ed = st.ElasticDepth(model, stages=[names])
    assert ed.stages[0].skippable == [True, True, True, False, True]
    assert ed.min_depths == [4] and ed.full_depths == [5]
    with pytest.raises(ValueError, match=r"outside \[4, 5\]"):
        ed.block_modes([3])
    # depth 4 skips only layer2.1 (layer2.2 is not in the manual stage and always runs)
    x, _ = batch(2)
    expected = hand_forward_cifar(pristine, [(RUN, RUN, RUN), (RUN, SKIP, RUN), (RUN, RUN, RUN)], x)
    with torch.no_grad(), ed.depth([4]):
        assert torch.allclose(model(x), expected, atol=1e-5)
    # the ordered space built for this model never goes below the min depth
    space = st.SampleSpace.for_model(ed, "ordered", seed=0)
    assert sorted(tuple(c) for c in space) == [(4,), (5,)]


def test_skippable_override(r20):
    _, _, pristine = r20
    ed = st.ElasticDepth(copy.deepcopy(pristine), skippable={"layer1.0": False, "layer1.2": False})
    assert ed.stages[0].skippable == [False, True, False]
    assert ed.min_depths == [3, 1, 1]


def test_mobilenet_shape_changing_blocks_are_never_skipped():
    model = st.create_model("mobilenet_v3_small", num_classes=10)
    ed = st.ElasticDepth(model)
    for stage in ed.stages:
        assert not stage.skippable[0]
        assert not stage.blocks[0].use_res_connect
        assert all(b.use_res_connect for b in stage.blocks[1:])
    # even the smallest sub-network runs every shape-changing block
    with ed.depth(ed.min_depths):
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# ------------------------------------------------------------------------------------------------------------
# raw (BRANCH/SKIP) and stochastic configs vs hand-written forwards
# ------------------------------------------------------------------------------------------------------------

def test_raw_config_matches_hand_forward(r20):
    model, ed, pristine = r20
    x, _ = batch(2, seed=3)
    config = [(BRANCH, SKIP, BRANCH), (RUN, BRANCH, SKIP), (RUN, SKIP, BRANCH)]
    with torch.no_grad():
        with ed.depth(config):
            got = model(x)
        expected = hand_forward_cifar(pristine, config, x)
        assert torch.allclose(got, expected, atol=1e-5)
        assert not torch.allclose(got, pristine(x), atol=1e-3)
    with pytest.raises(ValueError, match="BRANCH"):
        ed.extract(config)


def test_stochastic_config_matches_hand_forward_and_extract(r20):
    model, ed, pristine = r20
    x, _ = batch(2, seed=4)
    config = [(SKIP, RUN, SKIP), (RUN, SKIP, RUN), (RUN, RUN, SKIP)]
    sub = ed.extract(config).eval()
    with torch.no_grad():
        with ed.depth(config):
            got = model(x)
        assert torch.allclose(got, hand_forward_cifar(pristine, config, x), atol=1e-5)
        assert torch.allclose(sub(x), got, atol=1e-5)
    assert sub.blocks_per_stage == [1, 2, 2]
    assert ed.num_blocks(config) == 5


def test_num_blocks(r20):
    _, ed, _ = r20
    assert ed.num_blocks() == 9
    assert ed.num_blocks([1, 2, 3]) == 6
    assert ed.num_blocks([(BRANCH, SKIP, BRANCH), (RUN, SKIP, SKIP), (RUN, RUN, RUN)]) == 6


def test_extract_updates_bookkeeping_and_keeps_original_intact(r20):
    model, ed, pristine = r20
    sub = ed.extract([1, 2, 3])
    assert sub.blocks_per_stage == [1, 2, 3]
    assert [len(sub.layer1), len(sub.layer2), len(sub.layer3)] == [1, 2, 3]
    assert model.blocks_per_stage == [3, 3, 3] and len(model.layer1) == 3
    assert list(sub.state_dict()) == list(st.models.CifarResNet([1, 2, 3]).state_dict())
    # extract from inside a context still yields a plain, full-running module for the given config
    with ed.depth([1, 1, 1]):
        sub2 = ed.extract([2, 2, 2])
    assert sub2.blocks_per_stage == [2, 2, 2]
    x, _ = batch(2)
    with torch.no_grad(), ed.depth([2, 2, 2]):
        assert torch.allclose(sub2.eval()(x), model(x), atol=1e-5)


def test_remove_restores_plain_classes(r20):
    model, ed, pristine = r20
    classes = [type(m) for m in pristine.modules()]
    ed.remove()
    assert [type(m) for m in model.modules()] == classes
    assert not any("_st_mode" in m.__dict__ for m in model.modules())
    x, _ = batch(2)
    with torch.no_grad():
        assert torch.allclose(model(x), pristine(x), atol=1e-6)
    # and it can be wrapped again
    ed2 = st.ElasticDepth(model)
    assert ed2.full_depths == [3, 3, 3]


def test_patched_blocks_keep_isinstance_and_deepcopy(r20):
    model, ed, _ = r20
    from stimulative.models import BasicBlock

    assert all(isinstance(b, BasicBlock) for s in ed.stages for b in s.blocks)
    clone = copy.deepcopy(model)
    x, _ = batch(2)
    with torch.no_grad():
        assert torch.allclose(clone(x), model(x))


@pytest.mark.parametrize("name", ["cifar_resnet20", "timm_resnet18", "hf_llama"])
def test_torch_save_of_an_elastic_model_loads_and_runs_the_same(name, tmp_path):
    """``torch.save(model)`` of a patched model (gated blocks are classes made at run time, drop-path hooks on):
    the loaded model gives the same outputs at the set depth, and can be made elastic again."""
    from stimulative.core.droppath import set_drop_path

    torch.manual_seed(0)
    if name == "hf_llama":
        transformers = pytest.importorskip("transformers")
        from stimulative.hf import Logits, elastic_depth

        model = Logits(transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
            num_key_value_heads=2)))
        ed, x = elastic_depth(model.model), torch.randint(0, 32, (2, 6))
    else:
        model = (st.create_model("cifar_resnet20", num_classes=10) if name == "cifar_resnet20"
                 else __import__("timm").create_model("resnet18", num_classes=10))
        randomize_bn(model)  # timm zero-initialises the last BN of a branch: every block would be the identity
        ed, x = st.ElasticDepth(model), batch(2)[0]
    set_drop_path(ed, 0.3, "linear")
    model.eval()
    ed.set_depth(ed.min_depths)
    with torch.no_grad():
        want = model(x)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), want)
    inner = loaded.model if name == "hf_llama" else loaded
    again = elastic_depth(inner) if name == "hf_llama" else st.ElasticDepth(inner)
    again.set_depth(again.full_depths)
    with torch.no_grad():
        assert not torch.allclose(loaded(x), want)  # the depth changes what it computes again


def test_gating_a_gated_class_is_refused(r20):
    from stimulative.core.elastic import _gated_forward, gated_subclass

    _, ed, _ = r20
    gated = type(ed.stages[0].blocks[1])
    assert gated_subclass(gated._st_original_class, _gated_forward) is gated  # one class per (class, forward)
    with pytest.raises(ValueError, match="already gated"):
        gated_subclass(gated, _gated_forward)
