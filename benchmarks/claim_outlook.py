"""Rebuild the claims' "what these seeds can tell" tables from a combined report's JSON, no store needed.

Run:  PYTHONPATH=$PWD python benchmarks/claim_outlook.py docs/journal_reproduced.json [--max_seeds 12] \
          [--figure claims.png]

Reads the per variant per seed values in the ``.json`` that ``fashion-cnn study --combined_report``
writes, judges each claim again with the packaged study files (same verdicts and p-values as the
document) and prints, per study, the detectable difference, the seeds per variant that would decide
each claim at its observed difference, the equivalence statements at the study's margins, and how
many verdicts survive Benjamini-Hochberg across all claims. ``--figure`` draws the claims figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fashion_cnn import figures
from fashion_cnn.study.power import claim_rows, document_outlooks, fdr_adjusted, fdr_line, outlook_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a combined report's .json")
    parser.add_argument("--max_seeds", type=int, default=12)
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    studies = document_outlooks(json.loads(args.results.read_text()), args.max_seeds)
    every = [ev for _, evs, _, _ in studies for ev in evs]
    for study, evaluations, looks, p_fdr in studies:
        print(f"\n## {study.title}\n")
        print("\n".join(outlook_table(evaluations, looks, p_fdr)))
        print("\n" + fdr_line(evaluations, p_fdr))
    print(
        "\n"
        + fdr_line(every, fdr_adjusted([ev.p_value for ev in every])).replace(
            "tested claims", "tested claims of all parts"
        )
    )
    if args.figure:
        rows = [
            row for s, evs, looks, _ in studies for row in claim_rows(evs, looks, f"{s.part or s.name}: ")
        ]
        figures.save_figure(
            figures.plot_claim_intervals("The journal's claims at a glance", rows), args.figure, dpi=110
        )
        print(f"\nFigure: {args.figure}")


if __name__ == "__main__":
    main()
