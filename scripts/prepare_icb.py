"""Prepare the seven public ICB RNA-seq cohorts into immunoplex's manifest + expression format.

Usage (from the repository root; the data stays outside the repository):

    .venv/bin/python scripts/prepare_icb.py --realdata ../shared/realdata --out data/icb

Writes OUT/manifest.csv (patient_id, label 1/0/empty, cohort, treatment, cancer_type, sample_id,
recist), OUT/expression.csv (patient_id + the genes shared by all cohorts, log2(TPM + 0.001) as
published) and OUT/genes_report.json (genes per cohort, dropped and missing genes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from immunoplex.errors import ImmunoplexError
from immunoplex.expression.icb import load_icb_cohorts, write_prepared

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--realdata",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "realdata",
        help="realdata root (or its expression/ folder); default ../shared/realdata",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "data" / "icb", help="output directory"
    )
    args = parser.parse_args(argv)
    try:
        prepared = load_icb_cohorts(args.realdata)
        paths = write_prepared(prepared, args.out)
    except ImmunoplexError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    rep = prepared.report
    for name, c in rep["cohorts"].items():
        print(
            f"{name:>10}: {c['samples']:3d} samples ({c['responders']} R / "
            f"{c['non_responders']} NR / {c['unlabelled']} unlabelled), {c['genes']} genes, "
            f"dropped for NaN: {c['dropped_for_missing_values'] or '-'}, "
            f"lacks {len(c['lacks_from_union'])} of the union"
        )
    print(f"shared genes: {rep['shared_genes']} of {rep['union_genes']} (union)")
    for key, path in paths.items():
        print(f"wrote {key}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
