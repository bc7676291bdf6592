"""``import stimulative as st``: what a user needs, and not the internals (issue 31 §4)."""

from __future__ import annotations

import importlib.util
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

    assert callable(st.train) and st.train.train is engine.train


def test_open_run_is_the_one_public_way_to_open_a_run(monkeypatch):
    """``open_run``/``Run`` open a trained run; the older loaders are internal, their public names warn once."""
    import stimulative.analysis as analysis
    import stimulative.lm.model as lm_model
    import stimulative.train as train_pkg
    import stimulative.train.checkpoint as checkpoint
    from stimulative.analysis import report

    public = [st.__all__, train_pkg.__all__, checkpoint.__all__, analysis.__all__, report.__all__]
    if importlib.util.find_spec("transformers") is not None:
        import stimulative.lm.train as lm_train

        public += [lm_train.__all__, lm_model.__all__]
        old = [(lm_train, "load_lm", lm_model.load_lm)]
    else:
        old = []
    for names in public:
        assert not {"SavedRun", "load_model", "read_run", "load_lm"} & set(names)
    old += [(train_pkg, "load_model", checkpoint.load_model), (train_pkg, "LoadedModel", checkpoint.LoadedModel),
            (analysis, "read_run", report._read_run)]
    for module, name, value in old:
        monkeypatch.setattr(module, "_WARNED", set())
        with pytest.warns(DeprecationWarning, match="stimulative.open_run"):
            assert getattr(module, name) is value
        with warnings.catch_warnings():  # once
            warnings.simplefilter("error")
            assert getattr(module, name) is value
