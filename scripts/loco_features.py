"""Leave-one-cohort-out benchmark of transferable expression features; writes the results page.

Usage (from the repository root):

    .venv/bin/python scripts/loco_features.py --realdata ../shared/realdata \\
        --out docs/expression_results.md --model-out data/icb/expression_transfer.json

Feature families (:mod:`immunoplex.expression.features`), each a :class:`TransferModel` (L2
logistic regression, C by leave-one-cohort-out inside the training cohorts only) fitted on six
cohorts and scored on the seventh, beside every signature (classic and rank-based) on exactly the
same labelled samples; pooled and per-cohort AUROC with bootstrap CIs; paired-bootstrap
differences against the best signature; a ``nested`` row (per held-out cohort, the family
chosen by inner LOCO over the training cohorts only, :mod:`immunoplex.expression.nested`) and a
``nested signature`` row chosen the same way; the same held-out scoring with only 25% of the
genes; and the nested choice refitted on all seven cohorts saved as JSON for
``immunoplex-predict``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from immunoplex.data.splits import loco_splits
from immunoplex.errors import ImmunoplexError
from immunoplex.evaluation.loco import (
    POOLED,
    LocoResult,
    best_by_pooled,
    bootstrap_auroc,
    markdown_table,
    mean_over_cohorts,
    run_loco,
    summarise,
    versus_table,
)
from immunoplex.expression.features import GENE_SETS, IMPRES_PAIRS, signature_scores
from immunoplex.expression.icb import load_icb_cohorts, read_prepared
from immunoplex.expression.nested import add_nested, add_nested_signature, select_family
from immunoplex.expression.signatures import SIGNATURES
from immunoplex.expression.transfer import TransferConfig, TransferEnsemble, TransferModel

REPO_ROOT = Path(__file__).resolve().parents[1]
PRIOR = ("TEFF", "GEP", "IFNG6", "CYT")
N_BAGS = 25
DEFAULT_FAMILIES = "sig,sig_prior,rank,pairs,pairs_prior,pairs_bag,ensemble"
NESTED, NESTED_SIG = "nested", "nested signature"
FAMILIES: dict[str, list[TransferConfig]] = {
    "sig": [TransferConfig(families=("sig",))],
    "sig_prior": [TransferConfig(families=("sig", "impres"), prior=PRIOR)],
    "rank": [TransferConfig(families=("rank",))],
    "pairs": [TransferConfig(families=("impres", "pairs"))],
    "pairs_prior": [TransferConfig(families=("impres", "pairs"), prior=PRIOR)],
    "pairs_bag": [TransferConfig(families=("impres", "pairs"), n_bags=N_BAGS)],
    "ensemble": [
        TransferConfig(families=("impres", "pairs")),
        TransferConfig(families=("sig", "impres"), prior=PRIOR),
        TransferConfig(families=("rank",)),
    ],  # = ENSEMBLE's families, in that order
}
DESCRIBE = {
    "sig": "singscore of every published/project gene set -> L2 logistic regression",
    "sig_prior": "prior (mean of TEFF, GEP, IFNG6, CYT singscores, coefficient free) + L2 "
    "correction on the gene-set scores and IMPRES",
    "rank": "within-sample ranks of the curated immune genes -> L2 logistic regression",
    "pairs": "IMPRES pairs + every pair of the curated checkpoint genes (A > B indicators) and the "
    "IMPRES score -> L2 logistic regression",
    "pairs_prior": "prior (as sig_prior) + L2 correction on the pair indicators",
    "pairs_bag": f"pairs, mean logit of {N_BAGS} fits on cohort-stratified bootstrap resamples "
    f"(seeds 0..{N_BAGS - 1}; C chosen unbagged, the inner score of the bagged model)",
    "ensemble": "mean probability of pairs, sig_prior and rank (model types)",
}


ENSEMBLE = ("pairs", "sig_prior", "rank")


def _add_ensemble(result: LocoResult, fitted: list[str]) -> None:
    """The ensemble's held-out scores: the mean of its members' held-out probabilities (the same
    models as fitting TransferEnsemble per fold, without fitting them twice)."""
    p = result.predictions
    members = p[p["method"].isin(ENSEMBLE)]
    mean = members.groupby("patient_id", sort=False)["score"].mean()
    rows = p[p["method"] == ENSEMBLE[0]].copy()
    rows["method"] = "ensemble"
    rows["score"] = mean.loc[rows["patient_id"]].to_numpy()
    result.predictions = pd.concat([p, rows], ignore_index=True)
    n_models = len(fitted)
    result.methods = [*fitted, "ensemble", *result.methods[n_models:]]
    result.info["ensemble"] = {
        c: {"best_params": {m: result.info[m][c]["best_params"] for m in ENSEMBLE}}
        for c in result.cohorts
    }


def factory(name: str):
    cfgs = FAMILIES[name]
    if len(cfgs) == 1:
        return lambda: TransferModel(cfgs[0])
    return lambda: TransferEnsemble(cfgs)


def fold_models(fitted: dict):
    """``(family, held_out) -> model`` from the LOCO fits; the ensemble from its members' fits."""

    def get(name: str, held_out: str):
        if name != "ensemble":
            return fitted[(name, held_out)]
        model = TransferEnsemble([FAMILIES[m][0] for m in ENSEMBLE])
        model.members = [fitted[(m, held_out)] for m in ENSEMBLE]
        return model

    return get


def build(chain: list[str], get, key: str):
    """One family's model, or the fallback chain (the first member that can score a table)."""
    if len(chain) == 1:
        return get(chain[0], key)
    model = TransferEnsemble([FAMILIES[m][0] for m in chain], mode="first")
    model.members = [get(m, key) for m in chain]
    return model


def fallback_chain(choice: str, scores: dict[str, float]) -> list[str]:
    """``choice`` then, when it is one model, the other one-model families by inner score, one
    per feature set (bagged/prior variants of features already in the chain add nothing when
    those features cannot be computed)."""
    if len(FAMILIES[choice]) > 1:  # an ensemble already leaves out a member it cannot compute
        return [choice]
    chain = [choice]
    for m in sorted(scores, key=lambda k: -scores[k] if np.isfinite(scores[k]) else np.inf):
        seen = {FAMILIES[c][0].families for c in chain}
        if len(FAMILIES[m]) == 1 and FAMILIES[m][0].families not in seen:
            chain.append(m)
    return chain


def partial_coverage(prepared, fold_model, chain: list[str], fraction: float, seed: int, log):
    """The LOCO models of the saved model's family (chain) score each held-out cohort again,
    reduced to a random ``fraction`` of the genes (a fresh draw per cohort): what a small-panel
    cohort would get."""
    values, labels, coh = prepared.expression, prepared.labels, prepared.cohorts.astype(str)
    rows = []
    rng = np.random.default_rng(seed)
    name = chain[0]
    for held_out, _, test in loco_splits(coh):
        model = build(chain, fold_model, held_out)
        genes = values.columns[rng.random(values.shape[1]) < fraction]
        test_x = values.iloc[test][genes]
        if isinstance(model, TransferEnsemble):
            prob, reps = model.proba_with_coverage(test_x)
        else:
            z, rep = model.decision_with_coverage(test_x)
            prob, reps = 1 / (1 + np.exp(-z)), [rep]
        y = labels.iloc[test].to_numpy()
        lab = y >= 0
        n_ok = sum(len(r.computable) for r in reps)
        n_all = sum(len(r.features) for r in reps)
        names = list(dict.fromkeys(n for r in reps for n in r.computable))
        by = chain[len(reps) - 1] if len(chain) > 1 else name
        rows.append(
            pd.DataFrame(
                {"cohort": held_out, "label": y[lab], "score": prob[lab],
                 "genes": len(genes), "computable": n_ok, "features": n_all, "by": by,
                 "names": ", ".join(names) if len(names) <= 60 else f"{len(names)} features"}
            )
        )  # fmt: skip
        log(f"{held_out}: {by} with {len(genes)} genes, {n_ok}/{n_all} features computable")
    return pd.concat(rows, ignore_index=True)


def fit_final(prepared, models: list[str], save: str, log):
    """The model saved for new cohorts, fitted on all cohorts: the named family, or (``nested``)
    the family the inner LOCO over all cohorts picks among ``models``. Returns (model, family,
    inner scores of the candidates or None); a one-model choice is saved as the fallback chain
    of :func:`fallback_chain`."""
    x, y, coh = prepared.expression, prepared.labels, prepared.cohorts
    if save != NESTED:
        log(f"fitting {save} on all cohorts")
        return factory(save)().fit(x, y, coh), [save], None
    fitted: dict = {}
    for m in [f for f in models if f != "ensemble"] + [f for f in ENSEMBLE if "ensemble" in models]:
        if (m, "all") not in fitted:
            log(f"fitting {m} on all cohorts")
            fitted[(m, "all")] = factory(m)().fit(x, y, coh)
    get = fold_models(fitted)
    choice, scores = select_family({m: get(m, "all") for m in models})
    chain = fallback_chain(choice, scores)
    log(f"nested choice on all cohorts: {choice} ({scores}); saved chain {chain}")
    return build(chain, get, "all"), chain, scores


def _subset(result: LocoResult, methods: list[str]) -> LocoResult:
    return LocoResult(result.predictions, methods, result.cohorts, result.info)


def _sig_table(result, summary, names: list[str]) -> str:
    lines = ["| signature | pooled AUROC [95% CI] | mean over cohorts |", "| --- | --- | --- |"]
    for n in names:
        ci = summary[(summary["method"] == n) & (summary["cohort"] == POOLED)].iloc[0]["ci"]
        lines.append(f"| {n} | {ci.fmt()} | {mean_over_cohorts(summary, n):.3f} |")
    return "\n".join(lines)


def _delta(result, a: str, b: str, args) -> tuple[float, float, float]:
    """Pooled AUROC(a) - AUROC(b), paired class-stratified bootstrap CI."""
    from immunoplex.evaluation.loco import paired_bootstrap_delta

    p = result.predictions
    ref = p[p["method"] == b].set_index("patient_id")
    oth = p[p["method"] == a].set_index("patient_id").loc[ref.index]
    return paired_bootstrap_delta(
        ref["label"], oth["score"], ref["score"], n_boot=args.n_boot, seed=args.seed
    )


def _choices(result, name: str) -> str:
    return ", ".join(f"{c}: `{i['chosen']}`" for c, i in result.info[name].items())


def _result_section(args, result, summary, models, sigs, best) -> list[str]:
    pooled = summary[summary["cohort"] == POOLED].set_index("method")["auroc"]
    best_model = max(models, key=lambda m: float(pooled[m]))
    d, lo, hi = _delta(result, NESTED, best, args)
    dn, lon, hin = _delta(result, NESTED, NESTED_SIG, args)
    db, lob, hib = _delta(result, best_model, best, args)
    mean_n = mean_over_cohorts(summary, NESTED)
    met = d >= 0.05 and lo > 0
    hw = (hi - lo) / 2
    verdict = "met" if met else "honest negative"
    other = {c: i["chosen"] for c, i in result.info[NESTED_SIG].items() if i["chosen"] != best}
    vs_nested = (
        f"Against the `{NESTED_SIG}` the Δ clears both thresholds, but the target is stated "
        f"against the best signature, and the nested signature is weaker than `{best}` "
        "because some folds' training cohorts pointed to another signature ("
        + ", ".join(f"{c}: `{m}`" for c, m in other.items())
        + "): not counted as meeting the target."
        if dn >= 0.05 and lon > 0
        else f"Against the `{NESTED_SIG}` the Δ does not clear both thresholds either."
    )
    bag = (
        f" Bagging `pairs` over {N_BAGS} seeds (`pairs_bag`) changes its pooled AUROC by "
        f"{pooled['pairs_bag'] - pooled['pairs']:+.3f}: the strongly penalised fit is already "
        "stable, so seed ensembling adds nothing here."
        if {"pairs", "pairs_bag"} <= set(models)
        else ""
    )
    return [
        f"## Result (issue 17): {verdict}",
        "",
        f"- **The model, chosen without looking at the held-out cohort** (`{NESTED}`: per "
        "held-out cohort, the family and its C picked by leave-one-cohort-out over the six "
        f"training cohorts only): pooled LOCO AUROC {pooled[NESTED]:.3f}, mean over cohorts "
        f"{mean_n:.3f}. Against the best signature `{best}` ({pooled[best]:.3f}): paired Δ "
        f"{d:+.3f} [95% CI {lo:+.3f}, {hi:+.3f}]; against the `{NESTED_SIG}` (picked the same "
        f"nested way among the {len(sigs)} signatures, pooled {pooled[NESTED_SIG]:.3f}): Δ "
        f"{dn:+.3f} [{lon:+.3f}, {hin:+.3f}]. {vs_nested}",
        f"- Target 1 (pooled Δ >= +0.05 and CI lower bound > 0): **{'met' if met else 'not met'}"
        f"**. Target 2 (mean over cohorts >= 0.66): **{'met' if mean_n >= 0.66 else 'not met'}"
        f"** ({mean_n:.3f}). Target 3 (25% of the genes, no `allow_missing`, computable "
        f"features reported): **{'met' if args.partial_fraction > 0 else 'not run'}** (section "
        "below).",
        f"- Outer-picked figures, for reference only: the best family by these same held-out "
        f"figures is `{best_model}` (pooled {pooled[best_model]:.3f}, mean "
        f"{mean_over_cohorts(summary, best_model):.3f}, Δ {db:+.3f} [{lob:+.3f}, {hib:+.3f}] vs "
        f"`{best}`); that figure carries the selection among {len(models)} families, and `{best}`"
        f" itself was picked on outer figures among {len(sigs)} signatures, which favours the "
        "signature side of every Δ in the table below.",
        f"- Families tried on these cohorts: {len(models)} here ({', '.join(models)}), plus the "
        "elastic-net and MLP on z-scored genes ([expression_baselines.md]"
        f"(expression_baselines.md)): {len(models) + 2} in all, every one by the same LOCO." + bag,
        f"- Nested choices per held-out cohort: {_choices(result, NESTED)}. Nested signature: "
        f"{_choices(result, NESTED_SIG)}.",
        f"- Why negative: {int((result.predictions['method'] == best).sum())} labelled samples. "
        f"The paired 95% CI of the pooled Δ has a half-width of about {hw:.3f}, so Δ >= +0.05 "
        f"with a lower bound above 0 needs an observed Δ of about {max(0.05, hw):+.3f} or more: "
        "a learned model would have to beat the best of the signatures by that much on cohorts "
        "it never saw. The COMPASS leave-one-cohort-out benchmark (16 cohorts, about 1,100 "
        "patients) is the anchor: learned models beat signatures there only modestly (mean over "
        "cohorts 0.688 vs 0.613 for the GEP signature) and only with five times the patients.",
        "",
    ]


def _report(args, prepared, result, summary, models, sigs, best, partial, final, inner, t) -> str:
    n_lab = int((prepared.labels >= 0).sum())
    save = args.save
    pooled = summary[summary["cohort"] == POOLED].set_index("method")["auroc"]
    rows = [*models, NESTED, NESTED_SIG]
    vt = versus_table(result, summary, rows, best, n_boot=args.n_boot, seed=args.seed)
    vn = versus_table(result, summary, [NESTED], NESTED_SIG, n_boot=args.n_boot, seed=args.seed)
    cols = list(dict.fromkeys([*SIGNATURES, best]))
    cmd = (
        ".venv/bin/python scripts/loco_features.py --realdata ../shared/realdata "
        "--out docs/expression_results.md --model-out data/icb/expression_transfer.json"
    )
    classic = ", ".join(
        f"`{s.name}` ({', '.join(s.genes)}; {s.source})" for s in SIGNATURES.values()
    )
    rank_sets = "; ".join(
        f"`{s.name}_rank` ({s.source}{', sign -1' if s.sign < 0 else ''})"
        for s in GENE_SETS.values()
    )
    pairs = ", ".join(f"{a} > {b}" for a, b in IMPRES_PAIRS)
    L = [
        "# Expression models on seven public ICB cohorts (leave-one-cohort-out)",
        "",
        "Produced by one command (from the repository root, the shared data beside it; "
        f"{t:.0f} s single-process):",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"Settings: families `{','.join(models)}`, {args.n_boot} bootstrap resamples, seed "
        f"{args.seed}; saved family `{save}`"
        f"{' (the nested choice on all seven cohorts)' if inner is not None else ''}.",
        "",
        "## Data",
        "",
        f"PredictioR `ICB_small_*` cohorts (log2(TPM + 0.001)); {len(prepared.expression)} "
        f"samples, {n_lab} labelled (R / NR; unlabelled samples are never scored or counted as "
        f"non-responders). Genes: the {prepared.expression.shape[1]} shared by all cohorts.",
        "",
        *_result_section(args, result, summary, models, sigs, best),
        "## Models vs the best signature (paired bootstrap on the same samples)",
        "",
        vt,
        "",
        f"`{NESTED}` and `{NESTED_SIG}` carry no outer selection; every other row, and the "
        f"reference `{best}`, was picked or is read on the outer figures. The nested model "
        "against the nested signature:",
        "",
        vn,
        "",
        "Pooled Δ: class-stratified paired bootstrap over all held-out samples. Mean-over-cohorts "
        "Δ: each cohort resampled within itself (stratified), the per-cohort differences averaged.",
        "",
        "## AUROC per held-out cohort (95% bootstrap CI)",
        "",
        markdown_table(_subset(result, [*rows, *cols]), summary),
        "",
        "Model scores are pooled as produced (every feature is within-sample, so no cohort "
        "statistics are used); signatures are z-scored within their cohort for pooling "
        "(label-free; per-cohort AUROCs unchanged).",
        "",
        "## Every signature (pooled over the same samples)",
        "",
        _sig_table(result, summary, sigs),
        "",
    ]
    if partial is not None:
        ci = bootstrap_auroc(partial["label"], partial["score"], n_boot=args.n_boot, seed=args.seed)
        per = [
            bootstrap_auroc(g["label"], g["score"], n_boot=args.n_boot, seed=args.seed).auroc
            for _, g in partial.groupby("cohort", sort=False)
        ]
        comp = partial.groupby("cohort", sort=False)[
            ["genes", "computable", "features", "names", "by"]
        ].first()
        cells = "\n".join(
            f"- {c}: {r.genes} genes; scored by `{r.by}`; {r.computable}/{r.features} features "
            f"computable: {r.names}"
            for c, r in comp.iterrows()
        )
        chain = args.chain
        title = " -> ".join(f"`{m}`" for m in chain)
        L += [
            f"## Partial gene coverage: {title} with {args.partial_fraction:.0%} of the genes",
            "",
            f"LOCO again, each held-out cohort reduced to a random {args.partial_fraction:.0%} of "
            "its genes before scoring (nothing filled in: gene sets with < 50% of their genes, "
            "pairs missing a gene and ranks of absent genes are left out, and the model is "
            f"refitted, same C, on the computable features; an ensemble member with none is left "
            f"out). Pooled AUROC {ci.fmt()}, mean over "
            f"cohorts {np.nanmean(per):.3f} (full genes: {pooled[save]:.3f} pooled). "
            "The LOCO models (fitted on the other six cohorts) of the saved model's families are "
            "used"
            + (
                ", as a fallback chain in the saved order: a member that can compute none of its "
                "features hands over to the next"
                if len(chain) > 1
                else ""
            )
            + ". Per held-out cohort (counts summed over the members tried), the features that "
            "were computable:",
            "",
            cells,
            "",
        ]
    L += [
        "## The saved model",
        "",
        f"`{args.model_out.relative_to(REPO_ROOT) if args.model_out.is_relative_to(REPO_ROOT) else args.model_out}`: "
        f"family `{save}` ({DESCRIBE[save]}) trained on all seven cohorts"
        + (
            ", saved as a fallback chain "
            + " -> ".join(f"`{m}`" for m in args.chain)
            + " (`TransferEnsemble`, mode `first`: the first member that can compute any of its "
            "features scores the table alone; on a table with the genes of these cohorts that is "
            f"`{save}`)"
            if len(args.chain) > 1
            else ""
        )
        + "; JSON of numbers and "
        "gene names (feature definitions, chosen C, the training feature matrix so that a "
        "cohort missing genes is scored by the model refitted on its computable features). "
        f"Chosen C: {final.best_params if final is not None else 'n/a'}."
        + (
            " The family is the nested choice: the same inner criterion as in every fold "
            "(mean of inner pooled and inner mean-over-cohorts AUROC), here by "
            "leave-one-cohort-out over all seven cohorts: "
            + ", ".join(f"`{k}` {v:.3f}" for k, v in inner.items())
            + "."
            if inner
            else ""
        ),
        "",
        "```bash",
        "immunoplex-predict ckpt=data/icb/expression_transfer.json input=null "
        "expression_file=new_cohort.csv out_dir=out/",
        "```",
        "",
        "`predictions.json` then holds `coverage`: per feature whether it was computable, the "
        "fraction of its genes present and the missing genes. No `allow_missing` is needed; a "
        "table with none of the model's features computable is an error. In Python: "
        "`immunoplex.expression.transfer.predict_transfer(json.load(f), table)` returns "
        "(probabilities, coverage reports).",
        "",
        "## Methods",
        "",
        "- Families: " + "; ".join(f"`{m}` = {DESCRIBE[m]}" for m in models) + ".",
        f"- `{NESTED}`: per held-out cohort, every family's model fitted on the six training "
        "cohorts already holds its inner leave-one-cohort-out held-out scores at its chosen C "
        "(bagged for `pairs_bag`; an ensemble's = the mean of its members' inner probabilities); "
        "the family with the best inner criterion (mean of inner pooled and inner "
        "mean-over-cohorts AUROC) is taken and its held-out scores used: one joint grid of "
        f"(family, C), chosen on the training cohorts only. `{NESTED_SIG}`: the signature with "
        "the best same criterion on the six training cohorts (scores z-scored within cohort), "
        "applied to the held-out one. (scripts/loco_features.py, "
        "src/immunoplex/expression/nested.py.)",
        "- Features are within-sample: singscore-like gene-set scores (mean normalised rank of the "
        "set's genes among the model's genes present in the sample, centred, times sqrt(12 k)); "
        "ranks; `A > B` indicators. Standardised with the training means/SDs. The L2 penalty C "
        "(grid 0, 1e-4 .. 0.3; 0 only with a prior) is chosen by leave-one-cohort-out over the "
        "six training cohorts only (score: mean of inner pooled and inner mean-over-cohorts "
        "AUROC), then refitted on all six. Balanced class weights.",
        f"- Classic signatures (no training): {classic}.",
        f"- Rank-based signatures (singscore, no training): {rank_sets}; `IMPRES` = fraction of "
        f"the computable IMPRES pairs (Auslander et al., Nat Med 2018: {pairs}) that hold.",
        "- Earlier models (scripts/loco_icb.py, z-scored genes; tables in "
        "[expression_baselines.md](expression_baselines.md)): elastic-net pooled 0.50 / mean "
        "0.58, MLP pooled 0.57 / mean 0.62.",
        "- The same feature builder is the multimodal model's expression branch with "
        "`immunoplex-train expression_norm=features` (configs/expression_norm/features.yaml; "
        '[models.md](models.md), "Expression as transferable features").',
        "",
        "Chosen C per held-out cohort:",
        "",
    ]
    for m in models:
        cs = {c: i.get("best_params") for c, i in result.info.get(m, {}).items()}
        L.append(f"- `{m}`: {cs}")
    L += [
        "",
        "Small cohorts (Riaz 4 R, Padron 3 R) give very wide intervals; read differences from "
        "the pooled paired comparison.",
        "",
    ]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", type=Path, default=REPO_ROOT.parent / "shared" / "realdata")
    parser.add_argument("--prepared", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "expression_results.md")
    parser.add_argument("--families", default=DEFAULT_FAMILIES, help=f"from {list(FAMILIES)}")
    parser.add_argument(
        "--save",
        default=NESTED,
        help="family saved (trained on all cohorts); 'nested' = the one the inner LOCO over all "
        "seven cohorts picks among --families",
    )
    parser.add_argument(
        "--model-out", type=Path, default=REPO_ROOT / "data" / "icb" / "expression_transfer.json"
    )
    parser.add_argument("--partial-fraction", type=float, default=0.25)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.families.split(",") if m.strip()]
    bad = [m for m in [*models, args.save] if m not in FAMILIES and m != NESTED]
    if bad:
        print(f"error: unknown family {bad[0]!r}; choose from {list(FAMILIES)}", file=sys.stderr)
        return 2
    t0 = time.time()

    def log(m: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {m}", flush=True)

    try:
        prepared = (
            read_prepared(args.prepared) if args.prepared else load_icb_cohorts(args.realdata)
        )
        ranked, _ = signature_scores(prepared.expression)
        fitted = [m for m in models if m != "ensemble"]
        if "ensemble" in models:
            fitted += [m for m in ENSEMBLE if m not in fitted]
        models_by_fold: dict = {}
        result = run_loco(
            prepared.expression, prepared.labels, prepared.cohorts,
            {m: factory(m) for m in fitted}, log=log, extra_baselines=ranked,
            after_fit=lambda n, c, m, _: models_by_fold.__setitem__((n, c), m),
        )  # fmt: skip
        if "ensemble" in models:
            _add_ensemble(result, fitted)
        models = [m for m in models if m in result.methods]
        sigs = [m for m in result.methods if m not in models]
        get = fold_models(models_by_fold)
        add_nested(result, models, get, NESTED, after=models[-1])
        add_nested_signature(result, sigs, NESTED_SIG, after=NESTED)
        summary = summarise(result, n_boot=args.n_boot, seed=args.seed)
        best = best_by_pooled(summary, sigs)
        final, chain, final_inner = fit_final(prepared, models, args.save, log)
        args.save, args.chain = chain[0], chain
        partial = None
        if args.partial_fraction > 0:
            partial = partial_coverage(prepared, get, chain, args.partial_fraction, args.seed, log)
        if str(args.model_out):
            args.model_out.parent.mkdir(parents=True, exist_ok=True)
            args.model_out.write_text(json.dumps(final.to_dict()))
            log(f"saved the all-cohort {args.save} model to {args.model_out}")
    except (ImmunoplexError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    text = _report(
        args, prepared, result, summary, models, sigs, best, partial, final, final_inner,
        time.time() - t0,
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    rows = [*models, NESTED, NESTED_SIG]
    print(versus_table(result, summary, rows, best, n_boot=args.n_boot, seed=args.seed))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
