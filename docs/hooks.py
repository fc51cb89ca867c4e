"""mkdocs hooks for the API page: Sphinx roles in docstrings become links, and the sweep section is optional.

- The package's docstrings are Google style but cross-reference with Sphinx roles
  (``:class:`~fashion_cnn.network.FashionCNNNet```), which Markdown renders as the literal role
  followed by code. Each role becomes an mkdocs-autorefs reference instead: a link where the
  target is documented on the site, plain code where it is not (``optional``: no warning, so the
  strict build does not depend on which objects the API page lists). A leading ``~`` shows only
  the last name, as in Sphinx.
- ``fashion_cnn.sweep`` is documented only when the package exists. Once ``fashion_cnn/sweep/``
  is on main for good, replace the marker in docs/api.md with its section and drop that part.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.api")

MARKER = "<!-- optional: fashion_cnn.sweep -->"
SWEEP_SECTION = """## Hyperparameter sweeps: `fashion_cnn.sweep`

::: fashion_cnn.sweep
    options:
      show_root_heading: false
      show_root_toc_entry: false
      show_submodules: false
"""

# What Markdown makes of :class:`~a.b.C`: the role as text, then the target as a code span.
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([\w.]+)(\(\))?</code>")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    package = Path(config["config_file_path"]).parent / "fashion_cnn" / "sweep" / "__init__.py"
    if package.is_file():
        return markdown.replace(MARKER, SWEEP_SECTION)
    log.info("fashion_cnn/sweep/ does not exist: the API page has no sweep section")
    return markdown.replace(MARKER, "")


def _autoref(match: re.Match[str]) -> str:
    short, target, call = match.group(1), match.group(2), match.group(3) or ""
    title = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{target}" optional><code>{title}{call}</code></autoref>'


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return _ROLE.sub(_autoref, html)
