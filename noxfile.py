"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s slow`` (real training)."""

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
    session.install("ruff")
    session.run("ruff", "check", "fashion_cnn", "tests", "benchmarks", "noxfile.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ (mkdocs.yml)."""
    session.install("mkdocs>=1.6")
    session.run("mkdocs", "build", "-d", "site")
