"""mkdocs hook: the README is the site's home page, and repository files outside docs/ can be linked.

The pages are written to read well on GitHub, where a link is a path relative to the file that holds it
(``docs/peers.md`` in the README, ``../benchmarks/results/peers/fronts.png`` in ``docs/peers.md``). On the site,
``docs/`` is the root and ``README.md`` is ``index.md``. This hook

* publishes ``README.md`` as ``index.md`` (so the README and the site's home page cannot drift apart);
* publishes every repository file outside ``docs/`` that a page links to and that exists (figures and records
  under ``benchmarks/results/``, recipes...), at its repository path;
* rewrites each page's relative links from repository paths to site paths.

A link to a file that does not exist is left as written, so ``mkdocs build --strict`` reports it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[2]
README = "README.md"
# [text](target) and ![alt](target); the target ends at whitespace or ")", an optional "title" may follow
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
SKIP = ("http://", "https://", "mailto:", "#", "/")


def _repo_path(site_uri: str) -> str:
    """The repository path of a page published at ``site_uri``."""
    return README if site_uri == "index.md" else f"docs/{site_uri}"


def _site_path(repo_path: str) -> str:
    """Where a repository file is published on the site."""
    if repo_path == README:
        return "index.md"
    return repo_path[len("docs/"):] if repo_path.startswith("docs/") else repo_path


def _targets(markdown: str, repo_page: str):
    """(match, repository path, fragment) of every relative link of a page."""
    for m in LINK.finditer(markdown):
        target = m.group(2)
        if target.startswith(SKIP) or "://" in target:
            continue
        path, _, fragment = target.partition("#")
        if not path:
            continue
        repo_target = posixpath.normpath(posixpath.join(posixpath.dirname(repo_page), path))
        yield m, repo_target, fragment


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "index.md", abs_src_path=str(REPO / README)))
    pages = [(README, (REPO / README).read_text())]
    pages += [(_repo_path(f.src_uri), Path(f.abs_src_path).read_text()) for f in files.documentation_pages()
              if f.src_uri != "index.md"]
    published = {f.src_uri for f in files}
    for repo_page, text in pages:
        for _, repo_target, _ in _targets(text, repo_page):
            if repo_target.startswith(("docs/", "../")) or repo_target == README:
                continue
            source = REPO / repo_target
            if repo_target not in published and source.is_file():
                files.append(File(repo_target, str(REPO), config["site_dir"], config["use_directory_urls"]))
                published.add(repo_target)
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    repo_page = _repo_path(page.file.src_uri)
    site_dir = posixpath.dirname(page.file.src_uri)
    out, last = [], 0
    for m, repo_target, fragment in _targets(markdown, repo_page):
        site_target = _site_path(repo_target)
        link = posixpath.relpath(site_target, site_dir or ".") + (f"#{fragment}" if fragment else "")
        out += [markdown[last:m.start(2)], link]
        last = m.end(2)
    return "".join(out) + markdown[last:]
