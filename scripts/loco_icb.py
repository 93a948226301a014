"""Leave-one-cohort-out baselines (elastic-net, MLP on z-scored genes) on the seven public ICB
cohorts; writes docs/expression_baselines.md (the transferable-feature models of
scripts/loco_features.py write docs/expression_results.md).

Usage (from the repository root):

    .venv/bin/python scripts/loco_icb.py --realdata ../shared/realdata --out docs/expression_baselines.md

For each held-out cohort the models (elastic-net logistic regression; expression-only torch
ResponseModel) are trained on the six others only, and the classic baselines (CD274, CD8A, CYT,
IFNG6, TEFF) score exactly the same labelled held-out samples. AUROC per cohort with a stratified
bootstrap 95% CI, pooled AUROC over all held-out predictions, and paired pooled differences.
``--model-out`` also saves the elastic-net trained on all seven cohorts (JSON, for
``immunoplex.expression.linear.predict_expression`` / immunoplex-predict).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import yaml

from immunoplex.errors import ImmunoplexError
from immunoplex.evaluation.loco import comparison_table, markdown_table, run_loco, summarise
from immunoplex.expression.icb import load_icb_cohorts, read_prepared
from immunoplex.expression.linear import ElasticNetConfig, ElasticNetExpressionModel
from immunoplex.expression.signatures import SIGNATURES

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = ("elasticnet", "mlp")


def _factories(names: list[str], norm_cfg: dict, seed: int) -> dict:
    factories = {}
    for name in names:
        if name == "elasticnet":
            cfg = ElasticNetConfig(normalizer=dict(norm_cfg), seed=seed)
            factories[name] = lambda cfg=cfg: ElasticNetExpressionModel(cfg)
        elif name == "mlp":
            from immunoplex.expression.mlp import MLPConfig, TorchExpressionModel

            mcfg = MLPConfig(normalizer=dict(norm_cfg))
            factories[name] = lambda mcfg=mcfg: TorchExpressionModel(mcfg)
        else:
            raise SystemExit(f"error: unknown model {name!r}; choose from {MODELS}")
    return factories


def _report(args: argparse.Namespace, prepared, result, summary, norm_cfg, final) -> str:
    rep = prepared.report
    n_lab = int((prepared.labels >= 0).sum())
    cmd = (
        ".venv/bin/python scripts/loco_icb.py --realdata ../shared/realdata "
        "--out docs/expression_baselines.md"
    )
    lines = [
        "# Expression baselines on seven public ICB cohorts (leave-one-cohort-out)",
        "",
        "Elastic-net and MLP on per-cohort z-scored genes. The transferable within-sample "
        "features (gene-set singscores, gene pairs, ranks), their LOCO results against the same "
        "signatures and the saved model: [expression_results.md](expression_results.md) "
        "(`scripts/loco_features.py`).",
        "",
        "Produced by (from the repository root, with the shared data beside it):",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"Settings: models `{','.join(args.models)}`, normalisation `{args.normalisation}` "
        f"(`{norm_cfg}`), {args.n_boot} bootstrap resamples, seed {args.seed}.",
        "",
        "## Data",
        "",
        f"PredictioR `ICB_small_*` cohorts (log2(TPM + 0.001), ~1,750-1,800 genes each); "
        f"{len(prepared.expression)} samples, {n_lab} labelled (R / NR by the published response "
        f"column; {len(prepared.expression) - n_lab} unlabelled samples are excluded from "
        f"training and scoring, never counted as non-responders). Genes: the "
        f"{rep.get('shared_genes', prepared.expression.shape[1])} shared by all cohorts "
        f"(union {rep.get('union_genes', '?')}); Nathanson's genes with missing values "
        "(ACAA2, FN1, NRP1, SLC5A3, TFRC) are dropped there and hence from the intersection.",
        "",
        "## AUROC per held-out cohort (95% bootstrap CI)",
        "",
        markdown_table(result, summary),
        "",
        "Pooled = all held-out predictions together (model probabilities as produced; baseline "
        "scores z-scored within their cohort, which leaves each cohort's AUROC unchanged). CIs: "
        "class-stratified percentile bootstrap (`immunoplex.evaluation.loco.bootstrap_auroc`).",
        "",
    ]
    for ref in args.models:
        lines += [
            f"## Pooled AUROC difference: {ref} vs the others (paired bootstrap 95% CI)",
            "",
            comparison_table(result, ref, n_boot=args.n_boot, seed=args.seed),
            "",
        ]
    lines += [
        "## Methods",
        "",
        "- Every model is trained on the six other cohorts only; the normaliser is fitted on "
        "them too. The held-out cohort is normalised by its own statistics (all its samples, "
        "labels unused), as a new cohort would be at inference.",
        "- `elasticnet`: logistic regression with elastic-net penalty "
        "(scikit-learn's objective; balanced class weights); C and l1_ratio chosen by inner "
        "leave-one-cohort-out CV over the training cohorts (mean AUROC).",
        "- `mlp`: the project's `ResponseModel` with the expression modality only "
        "(`configs/model/expression_only.yaml` when present, else ResponseModel defaults), "
        "treatment conditioning off, full-batch AdamW, 150 epochs, mean of 3 seeds.",
        "- Baselines, fixed sign (higher = responder), no training: "
        + "; ".join(f"`{s.name}` = {', '.join(s.genes)} ({s.source})" for s in SIGNATURES.values())
        + ". CYT and IFNG6 are means of log values (log geometric mean / Ayers' averaged "
        "log expression); TEFF is the mean of within-cohort z-scores.",
        "",
        "Hyperparameters chosen per held-out cohort (elastic-net):",
        "",
    ]
    for cohort, info in result.info.get("elasticnet", {}).items():
        lines.append(f"- {cohort}: {info.get('best_params')} ({info.get('inner_cv')})")
    if final is not None:
        top = ", ".join(f"{g} ({c:+.3f})" for g, c in final.top_genes(15))
        lines += [
            "",
            f"Final elastic-net on all seven cohorts: {final.best_params}, inner CV AUROC "
            f"{final.cv_auroc:.2f}, {int((final.coef != 0).sum())} non-zero genes; largest: {top}.",
        ]
    lines += [
        "",
        "Small cohorts (Riaz 4 R, Padron 3 R) give very wide intervals; differences between "
        "methods should be read from the pooled paired comparison, not from single cohorts.",
        "",
        "## Using the saved model on a new cohort",
        "",
        "The run also saves the elastic-net trained on all seven cohorts (normaliser + gene list "
        "+ coefficients, JSON) to `data/icb/expression_elasticnet.json` (`--model-out`):",
        "",
        "```python",
        "import json",
        "from immunoplex.expression.io import read_expression",
        "from immunoplex.expression.linear import predict_expression",
        "model = json.load(open('data/icb/expression_elasticnet.json'))",
        "table = read_expression('new_cohort.csv')  # genes x samples or samples x genes",
        "p = predict_expression(model, table)  # the table is z-scored as one new cohort (>= 3)",
        "```",
        "",
        "Every model gene must be present (an error lists the missing ones) unless "
        "`allow_missing=True`, which fills them with the training means and says so.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", type=Path, default=REPO_ROOT.parent / "shared" / "realdata")
    parser.add_argument(
        "--prepared", type=Path, default=None, help="use a scripts/prepare_icb.py output dir"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "expression_baselines.md")
    parser.add_argument(
        "--normalisation",
        type=Path,
        default=REPO_ROOT / "configs" / "expression_norm" / "zscore_cohort.yaml",
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {MODELS}")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model-out",
        type=Path,
        default=REPO_ROOT / "data" / "icb" / "expression_elasticnet.json",
        help="where to save the elastic-net trained on all cohorts ('' to skip)",
    )
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    t0 = time.time()
    try:
        norm_cfg = yaml.safe_load(args.normalisation.read_text())
        prepared = (
            read_prepared(args.prepared) if args.prepared else load_icb_cohorts(args.realdata)
        )
        result = run_loco(
            prepared.expression,
            prepared.labels,
            prepared.cohorts,
            _factories(args.models, norm_cfg, args.seed),
            log=lambda m: print(f"[{time.time() - t0:6.1f}s] {m}", flush=True),
        )
        summary = summarise(result, n_boot=args.n_boot, seed=args.seed)
        final = None
        if "elasticnet" in args.models and str(args.model_out):
            cfg = ElasticNetConfig(normalizer=dict(norm_cfg), seed=args.seed)
            final = ElasticNetExpressionModel(cfg).fit(
                prepared.expression, prepared.labels, prepared.cohorts
            )
            args.model_out.parent.mkdir(parents=True, exist_ok=True)
            args.model_out.write_text(json.dumps(final.to_dict()))
            print(f"saved the all-cohort elastic-net to {args.model_out}")
    except (ImmunoplexError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    with contextlib.suppress(ValueError):
        args.normalisation = args.normalisation.resolve().relative_to(REPO_ROOT)
    text = _report(args, prepared, result, summary, norm_cfg, final)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(markdown_table(result, summary))
    print(f"wrote {args.out} in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
