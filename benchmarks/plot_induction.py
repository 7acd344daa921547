"""Plot induction-heads accuracy against test length for every run of a synthetic results file.

    python benchmarks/plot_induction.py benchmarks/results/synthetic_induction_h200.jsonl \
        --out benchmarks/results/induction_accuracy.png

Reads the JSON result lines of `python -m pipelines.synthetic induction` (one per run; lines of
other tasks are skipped) and draws one line per run, labelled by seed, via the pipeline's own plot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.synthetic import plot_accuracy


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="JSON lines, one run each")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args(argv)
    runs = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    runs = [r for r in runs if r.get("task") == "induction" and r.get("accuracy_by_length")]
    if not runs:
        sys.exit(f"plot_induction: {args.results} holds no induction result with accuracies")
    curves = {f"seed {r['seed']}": r["accuracy_by_length"] for r in sorted(runs, key=lambda r: r["seed"])}
    out = Path(args.out)
    return plot_accuracy(curves, out.parent, runs[0]["train_length"], out.name)


if __name__ == "__main__":
    print(main())
