"""Griffe extension for the API reference: a docstring's ``Example:`` section is a doctest, as ``Examples:`` is.

Google-style parsing reads ``Example:`` (singular) as an admonition whose text is Markdown, so a doctest's output
such as ``[[3, 3, 3], [1, 1, 1]]`` would render as a broken link. The docstrings stay as they are (``Example:``
reads well in ``help()``); only the copy the site renders is changed.
"""

from __future__ import annotations

import re

import griffe

EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
