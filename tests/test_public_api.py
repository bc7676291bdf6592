"""``import stimulative as st``: what a user needs, and not the internals (issue 31 §4)."""

from __future__ import annotations

import warnings

import pytest

import stimulative as st


def test_every_public_name_resolves_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in st.__all__:
            assert getattr(st, name) is not None, name
    assert len(st.__all__) == len(set(st.__all__))
    for name in ("StimulativeStep", "stimulative_step", "StepOptions", "ElasticDepth", "SampleSpace", "create_model",
                 "load_config", "train", "open_run", "export_run", "extract_subnetwork"):
        assert name in st.__all__


def test_internals_are_not_public_but_stay_in_their_modules():
    from stimulative.core.elastic import BRANCH, RUN, SKIP, find_stages

    for name in ("BRANCH", "RUN", "SKIP", "find_stages", "losses", "has_batchnorm"):
        assert name not in st.__all__
    # version 0.1.0's top-level names: read with a warning until the next release
    for name, value in (("RUN", RUN), ("SKIP", SKIP), ("BRANCH", BRANCH), ("find_stages", find_stages)):
        with pytest.warns(DeprecationWarning, match=f"stimulative.{name} is now imported from stimulative.core"):
            assert getattr(st, name) is value
    with pytest.raises(AttributeError):
        st.has_batchnorm  # noqa: B018  (dead code, removed)


def test_train_is_the_package_and_the_function():
    import stimulative.train.engine as engine
    from stimulative.train import load_model

    assert callable(st.train) and st.train.train is engine.train and st.train.load_model is load_model
