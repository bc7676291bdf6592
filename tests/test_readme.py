"""The README and the docs pages it links to: the examples run as written and the README stays short (the
generated tables of docs/ are what benchmarks/report.py builds from the records: benchmarks/tests/test_report.py)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"


def test_readme_api_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no ```python example"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    ed, small, losses, x = scope["ed"], scope["small"], scope["losses"], scope["x"]
    assert ed.full_depths == [9, 9, 9]
    model = scope["model"].eval()
    # `small` was extracted before optimizer.step(): a copy, so the step changed the model but not it
    assert not torch.equal(small.fc.weight, model.fc.weight)
    with torch.no_grad(), ed.depth([3, 3, 3]):
        assert torch.allclose(ed.extract([3, 3, 3]).eval()(x), model(x), atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in scope["model"].parameters())
    assert set(losses) >= {"loss", "main", "subnet"} and losses["subnet"] > 0


def _section(heading: str) -> str:
    return README.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_integration_example_is_the_lightning_page_example():
    # the README shows one integration, word for word the first example of its page, which
    # tests/test_integration_readme_snippets.py runs (as it runs the Accelerate and transformers pages' examples)
    section = _section("Use it in your trainer")
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the README shows one integration snippet; the others are on their pages"
    page = re.findall(r"```python\n(.*?)```", (DOCS / "integrations" / "lightning.md").read_text(), re.S)[0]
    assert blocks[0] == page
    for linked in ("docs/integrations/lightning.md", "docs/integrations/accelerate.md",
                   "docs/integrations/transformers.md", "docs/lm.md"):
        assert f"]({linked})" in section, linked


def test_readme_is_short_and_links_every_moved_section():
    text = README.read_text()
    assert len(text.encode()) <= 12_000, f"README.md is {len(text.encode()):,} bytes; move detail to docs/"
    assert "<!--" not in text, "generated blocks belong in docs pages, not in the README"
    # what CI (.ci/run) runs is what the README says to run
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in _section("Install") and 'pip install -e ".[dev]"' in ci
    assert "python -m pytest" in _section("Tests and documentation") and "python -m pytest" in ci
    # the benchmark scripts' own tests: a second suite, in the README and in CI
    assert "python -m pytest benchmarks/tests" in _section("Tests and documentation")
    assert 'for suite in "" benchmarks/tests' in ci and "python -m pytest $suite" in ci
    assert "mkdocs serve" in _section("Tests and documentation")
    # the sections that moved out of the README, one link away
    links = set(re.findall(r"\]\((docs/[^)#]+)", text))
    for page in ("method.md", "training.md", "python-api.md", "analyses.md", "deploy.md", "reliability.md",
                 "lm.md", "peers.md", "results.md", "evidence.md", "development.md", "architecture.md"):
        assert f"docs/{page}" in links, page
    for page in links:
        assert (REPO / page).is_file(), page
    assert "](docs/peers.md#when-does-st-help)" in text


def test_readme_headline_numbers_are_on_their_pages():
    # each headline number of the README's table is stated on the page its row links to (to the README's
    # precision: 80.5 there for the paper's 80.50); spreads after "±" are the README's summary of the seeds
    rows = [line.split("|")[1:4] for line in README.read_text().splitlines()
            if line.startswith("| ") and "](docs/" in line and line.count("|") == 4]
    assert len(rows) >= 6
    number = r"(?<![\d.])\d+(?:\.\d+)?(?![\d])"
    for area, cell, links in rows:
        text = " ".join((REPO / page).read_text() for page in re.findall(r"\]\((docs/[^)#]+)", links))
        on_page = {float(x) for x in re.findall(number, text)}
        for value in re.findall(rf"(?<!± ){number}", re.sub(r"`[^`]*`", "", cell)):
            digits = len(value.split(".")[1]) if "." in value else 0
            assert any(round(x, digits) == float(value) for x in on_page), f"{area.strip()}: {value}"
