"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s slow`` (real training), ``nox -s docs``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install(*TORCH)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def slow(session: nox.Session) -> None:
    """Tests marked slow: real training on the real data (minutes)."""
    session.install(*TORCH)
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over everything, mypy over the package (settings in pyproject.toml's [tool.mypy])."""
    session.install(*TORCH)
    session.install("-e", ".[lint,ray,postgres]")
    session.run("ruff", "check", "fashion_cnn", "tests", "benchmarks", "noxfile.py")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/, strictly: a broken link, anchor or API reference fails.

    Installs only the ``docs`` extra's tools, not the package: mkdocstrings reads the API
    reference from the source tree without importing it (mkdocs.yml), so torch is not needed.
    """
    extras = nox.project.load_toml("pyproject.toml")["project"]["optional-dependencies"]
    session.install(*extras["docs"])
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)
