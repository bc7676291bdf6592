"""The minimal examples of docs/integrations/{lightning,accelerate,transformers}.md run as written.

Each page's first ```python block is the page's minimal example (the README shows the Lightning one, word for word:
tests/test_readme.py); the test reads it from the page and executes it (offline, CPU), so the docs and this test
cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations"


def first_python_block(page: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    assert blocks, f"no ```python block in docs/integrations/{page}"
    return blocks[0]


def run_snippet(page: str, tmp_path, monkeypatch) -> dict:
    code = first_python_block(page)
    assert len(code.strip().splitlines()) <= 15, f"the {page} snippet should stay README-sized"
    monkeypatch.chdir(tmp_path)                              # anything the snippet writes lands here
    namespace: dict = {"__name__": "__snippet__"}
    exec(compile(code, f"docs/integrations/{page}", "exec"), namespace)
    return namespace


def test_lightning_snippet_runs(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    ns = run_snippet("lightning.md", tmp_path, monkeypatch)
    assert ns["trainer"].global_step == 4                    # 2 epochs x 2 batches
    assert ns["module"].step.num_subnets == 2
    convs = [name for name in ns["small"].state_dict() if name.endswith("conv1.weight")]
    assert len(convs) == 4                                   # the stem and one block per stage


def test_accelerate_snippet_runs(tmp_path, monkeypatch):
    pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        ns = run_snippet("accelerate.md", tmp_path, monkeypatch)
        assert ns["step"].calls == 2 and len(ns["step"].last_configs) == 2
        assert ns["step"].backward == ns["accelerator"].backward
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def test_transformers_snippet_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import torch
    import transformers

    torch.manual_seed(0)
    ns = run_snippet("transformers.md", tmp_path, monkeypatch)     # writes resnet-2-1/ into tmp_path
    assert ns["ed"].full_depths == [3, 3] and ns["step"].calls == 1
    loaded = transformers.ResNetForImageClassification.from_pretrained(tmp_path / "resnet-2-1")
    assert loaded.config.depths == [2, 1]
