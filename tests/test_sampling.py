"""SampleSpace: ranges, uniform frequencies, seeding, enumeration, unskippable blocks, errors."""

from __future__ import annotations

import collections
import itertools

import pytest
import torch

import stimulative as st
from stimulative.core.elastic import BRANCH, RUN, SKIP
from stimulative.core.sampling import SAMPLING_KINDS


def _key(config) -> tuple:
    return tuple(c if isinstance(c, int) else tuple(c) for c in config)


def _chi_square(counts: collections.Counter, support: list, draws: int) -> float:
    expected = draws / len(support)
    return sum((counts.get(k, 0) - expected) ** 2 / expected for k in support)


@pytest.fixture
def r20_ed():
    return st.ElasticDepth(st.create_model("cifar_resnet20", num_classes=10))


def test_ordered_respects_min_depths_and_never_skips_a_first_block(r20_ed):
    space = st.SampleSpace.ordered([3, 3, 3], min_depths=[2, 1, 3], seed=0)
    seen = {_key(space.sample()) for _ in range(500)}
    assert seen == set(itertools.product([2, 3], [1, 2, 3], [3]))
    # as block modes: the first block of every stage always runs
    space = st.SampleSpace.for_model(r20_ed, "ordered", seed=1)
    for _ in range(200):
        modes = r20_ed.block_modes(space.sample())
        assert all(row[0] == RUN for row in modes)


def test_inter_stage_respects_ranges():
    space = st.SampleSpace.inter_stage([3, 4, 6, 3], ranges=[1, 2, 4, 1], seed=0)
    assert len(space) == 8
    expected = {(3, d2, d3, 3) for d2 in (3, 4) for d3 in (3, 4, 5, 6)}
    assert {_key(c) for c in space} == expected
    draws = [space.sample() for _ in range(800)]
    assert all(c[0] == 3 and c[3] == 3 for c in draws)  # stages 1 and 4 always full
    assert {_key(c) for c in draws} == expected
    with pytest.raises(ValueError, match="range"):
        st.SampleSpace.inter_stage([3, 4, 6, 3], ranges=[1, 5, 4, 1])
    with pytest.raises(ValueError, match="one range per stage"):
        st.SampleSpace.inter_stage([3, 4, 6, 3], ranges=[1, 2])


def _space_args(kind: str, ranges: list[int]) -> dict:
    """What each kind needs besides the depths: inter-stage ranges, the configurations of 'choices'."""
    return {"ranges": ranges if kind == "inter_stage" else None,
            "depths": [[1, 1, 1], [3, 2, 1], [2, 3, 2]] if kind == "choices" else None}


@pytest.mark.parametrize("kind", SAMPLING_KINDS)
def test_frequencies_are_uniform(kind):
    full = [3, 3, 3] if kind in ("ordered", "inter_stage", "choices") else [2, 3, 2]
    space = st.SampleSpace(kind, full, **_space_args(kind, [2, 3, 1]), seed=123)
    support = [_key(c) for c in space]
    draws = 400 * len(support)
    counts = collections.Counter(_key(space.sample()) for _ in range(draws))
    assert set(counts) == set(support)
    # chi-square with len-1 degrees of freedom (<= 26 here): mean = df, sd = sqrt(2 df) <= 7.3;
    # 3 * df + 10 is far in the tail for a uniform sampler and far below what a biased one gives.
    df = len(support) - 1
    assert _chi_square(counts, support, draws) < 3 * df + 10
    # a clearly biased sampler must fail the same bound (the test can fail)
    biased = collections.Counter(counts)
    biased[support[0]] += draws // 10
    assert _chi_square(biased, support, draws + draws // 10) > 3 * df + 10


@pytest.mark.parametrize("kind", SAMPLING_KINDS)
def test_seeding_reproduces(kind):
    def draws(seed):
        space = st.SampleSpace(kind, [3, 3, 3], **_space_args(kind, [3, 3, 3]), seed=seed)
        return [_key(space.sample()) for _ in range(50)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    space = st.SampleSpace(kind, [3, 3, 3], **_space_args(kind, [3, 3, 3]), seed=7)
    first = [_key(space.sample()) for _ in range(10)]
    space.manual_seed(7)
    assert [_key(space.sample()) for _ in range(10)] == first


@pytest.mark.parametrize("kind", SAMPLING_KINDS)
def test_len_equals_enumeration_and_configs_are_valid(kind, r20_ed):
    space = st.SampleSpace.for_model(r20_ed, kind, **_space_args(kind, [2, 3, 1]), seed=0)
    configs = list(space)
    assert len(configs) == len(space) == len({_key(c) for c in configs})
    expected = {"ordered": 27, "inter_stage": 6, "stochastic": 2 ** 6, "raw": 2 ** 7, "choices": 3}[kind]
    assert len(space) == expected
    for config in configs:
        r20_ed.block_modes(config)  # valid for the model
        assert config in space
    for _ in range(50):
        assert space.sample() in space


def test_stochastic_keeps_unskippable_and_first_blocks(r20_ed):
    space = st.SampleSpace.for_model(r20_ed, "stochastic", seed=0)
    kept_always = {(i, 0) for i in range(3)}  # first block of every stage (layer2.0, layer3.0 change shape)
    seen_skip = set()
    for _ in range(300):
        config = space.sample()
        for i, row in enumerate(config):
            for j, mode in enumerate(row):
                assert mode in (RUN, SKIP)
                if mode == SKIP:
                    seen_skip.add((i, j))
    assert not seen_skip & kept_always
    assert seen_skip == {(i, j) for i in range(3) for j in (1, 2)}
    # explicit skippable flags are honoured
    space = st.SampleSpace.stochastic([3], skippable=[[False, True, False]], seed=0)
    assert {_key(c) for c in space} == {((RUN, RUN, RUN),), ((RUN, SKIP, RUN),)}


def test_raw_gives_branch_or_skip(r20_ed):
    space = st.SampleSpace.for_model(r20_ed, "raw", seed=0)
    values = collections.defaultdict(set)
    for _ in range(300):
        for i, row in enumerate(space.sample()):
            for j, mode in enumerate(row):
                values[(i, j)].add(mode)
    for (i, j), modes in values.items():
        if r20_ed.stages[i].skippable[j]:
            assert modes == {BRANCH, SKIP}, (i, j)
        else:
            assert modes == {RUN}, (i, j)
    # a raw config runs
    with r20_ed.depth(space.sample()):
        assert r20_ed.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_stochastic_keeps_first_block():
    model = st.create_model("timm/vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=3)
    ed = st.ElasticDepth(model)
    space = st.SampleSpace.for_model(ed, "stochastic", seed=0)
    assert len(space) == 4 and all(c[0][0] == RUN for c in space)
    assert len(st.SampleSpace.for_model(ed, "raw", seed=0)) == 8


def test_invalid_arguments_list_valid_choices():
    with pytest.raises(ValueError) as info:
        st.SampleSpace("random_walk", [3, 3, 3])
    for kind in SAMPLING_KINDS:
        assert kind in str(info.value)
    with pytest.raises(ValueError, match="min_depths"):
        st.SampleSpace.ordered([3, 3], min_depths=[4, 1])
    with pytest.raises(ValueError, match="full_depths"):
        st.SampleSpace.ordered([3, 0])
    with pytest.raises(ValueError, match="skippable"):
        st.SampleSpace.stochastic([3, 3], skippable=[[True, True], [True, True, True]])


def test_repr_and_contains():
    space = st.SampleSpace.ordered([2, 3], seed=0)
    assert "size=6" in repr(space)
    assert [1, 3] in space and [0, 3] not in space and [1, 2, 3] not in space


def test_choices_draw_only_the_given_depths_and_refuse_bad_ones():
    space = st.SampleSpace.choices([30], depths=[8], seed=0)
    assert {_key(space.sample()) for _ in range(20)} == {(8,)} and len(space) == 1 and list(space) == [[8]]
    assert [8] in space and [9] not in space
    space = st.SampleSpace.choices([30], depths=[8, 16], seed=0)  # ints: one stage's depths
    assert {_key(space.sample()) for _ in range(100)} == {(8,), (16,)}
    for bad, key in (([31], "outside"), ([8, 8], "twice"), ([], "needs depths"), ([[1, 2]], "depth per stage")):
        with pytest.raises(ValueError, match=key):
            st.SampleSpace.choices([30], depths=bad)
    with pytest.raises(ValueError, match="depth per stage"):
        st.SampleSpace.choices([3, 3], depths=[2])  # an int only for a one-stage model
    with pytest.raises(ValueError, match="choices"):
        st.SampleSpace.ordered([3]).__class__("ordered", [3], depths=[2])


def test_choices_read_off_the_main_forward():
    from stimulative.core.step import prefix_step_applies

    assert prefix_step_applies(st.SampleSpace.choices([6], depths=[2, 4]))
    assert not prefix_step_applies(st.SampleSpace.choices([3, 3], depths=[[1, 2]]))
