"""The documentation site builds with ``mkdocs build --strict`` (a broken link, anchor, missing page or docstring
the API reference cannot render fails), and nothing cites a method specification outside the repository."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material", "mkdocstrings")),
                    reason='the docs extra is not installed (pip install -e ".[docs]")')
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert result.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(warnings or [result.stderr[-3000:]])
    home = (site / "index.html").read_text()
    assert "Stimulative Training" in home and 'href="peers/#when-does-st-help"' in home  # the README, links rewritten
    for page in ("method", "peers", "results", "lm", "api/stimulative", "api/core"):
        assert (site / page / "index.html").is_file(), page
    assert "StimulativeStep" in (site / "api" / "core" / "index.html").read_text()
    # repository files a page shows (figures under benchmarks/results/) are published with it
    assert (site / "benchmarks" / "results" / "peers" / "fronts.png").is_file()


def test_method_spec_is_the_repository_page():
    # docs/method.md is the method's specification; no file cites a specification users do not have
    assert (REPO / "docs" / "method.md").is_file()
    spec = "METHOD" + ".md"
    citing = [f"{path.relative_to(REPO)}:{n}"
              for folder in ("src", "tests", "benchmarks", "docs", "recipes", "examples")
              for path in sorted((REPO / folder).rglob("*")) if path.suffix in (".py", ".md", ".yaml", ".sh")
              for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if spec in line]
    citing += [f"README.md:{n}" for n, line in enumerate((REPO / "README.md").read_text().splitlines(), 1)
               if spec in line]
    assert not citing, "cite docs/method.md instead: " + ", ".join(citing)
    text = (REPO / "docs" / "method.md").read_text()
    cited = set()
    for first, last in re.findall(r"Eq\. (\d+)(?:–(\d+))?", text):  # "Eq. 7" or a range "Eq. 2–3"
        cited.update(range(int(first), int(last or first) + 1))
    assert cited >= set(range(1, 13)), f"the paper's equations 1-12 are each named; missing {set(range(1, 13)) - cited}"
