"""Signatures plus a small learned correction, on within-sample features that travel.

:class:`TransferModel`: features from :class:`~immunoplex.expression.features.FeatureBuilder`
(no per-cohort statistics), standardised with the training means/SDs, then an L2-penalised
logistic regression ``logit = b + a * prior + w . x``. ``prior`` is the mean of the standardised
signed scores of fixed published signatures (empty = none); its coefficient ``a`` and ``b`` are not
penalised, ``w`` is, so the strongest penalty (C = 0) gives the prior signature alone and a
weaker one a learned correction. C is chosen by leave-one-cohort-out over the training cohorts
only (score = mean of inner pooled AUROC and inner mean-over-cohorts AUROC; ties go to the
smaller C). ``n_bags > 0`` averages that many fits on cohort-stratified bootstrap resamples
(seeds ``seed .. seed + n_bags - 1``) after choosing C. ``inner_logit`` keeps each training
sample's inner held-out logit at the chosen C (bagged too when ``n_bags > 0``; NaN where the
cohort was not held out), so that a family can be chosen by the same inner LOCO
(:mod:`immunoplex.expression.nested`).

:class:`TransferEnsemble` averages the probabilities of several such models (model types), or
(``mode="first"``) is a fallback chain: the first member that can compute a feature scores.

Serialisation is plain JSON of numbers and gene names under a fixed ``kind`` string; the training
feature matrix is stored too, so that a cohort on which some features cannot be computed is scored
by the same model refitted (same C) on the computable features only: no value is ever filled in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from immunoplex.errors import CheckpointError, ExpressionError
from immunoplex.expression.features import CoverageReport, FeatureBuilder, FeatureSpec
from immunoplex.expression.genes import normalise_symbol

KIND_MODEL = "TransferExpressionModel"
KIND_ENSEMBLE = "TransferEnsemble"
KINDS = frozenset({KIND_MODEL, KIND_ENSEMBLE})
_VERSION = 1
_DEFAULT_PRIOR = ("TEFF", "GEP", "IFNG6", "CYT")


@dataclass
class TransferConfig:
    families: tuple[str, ...] = ("sig",)
    prior: tuple[str, ...] = ()
    Cs: tuple[float, ...] = (0.0, 1e-4, 3e-4, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
    min_fraction: float = 0.5
    class_weight: str | None = "balanced"
    n_bags: int = 0
    seed: int = 0


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def fit_l2_logistic(
    x: np.ndarray,
    y: np.ndarray,
    C: float,
    free: np.ndarray,
    weight: np.ndarray | None = None,
    init: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Minimise ``C * sum_i s_i logloss_i + 0.5 ||w_pen||^2`` over (w, b), where ``free`` marks
    unpenalised columns; C = 0 fixes the penalised weights at 0."""
    n, p = x.shape
    s = np.ones(n) if weight is None else weight
    pen = ~free
    cols = np.flatnonzero(free) if C == 0 else np.arange(p)
    xs = x[:, cols]
    c_eff = 1.0 if C == 0 else C
    pen_s = np.zeros(len(cols)) if C == 0 else pen.astype(np.float64)

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = xs @ w + b
        loss = np.logaddexp(0.0, z) - y * z
        r = s * (1.0 / (1.0 + np.exp(-z)) - y)
        obj = c_eff * float(s @ loss) + 0.5 * float((pen_s * w) @ w)
        grad = np.append(c_eff * (xs.T @ r) + pen_s * w, c_eff * r.sum())
        return obj, grad

    res = minimize(f, np.zeros(len(cols) + 1), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000, "gtol": 1e-6})  # fmt: skip
    w = np.zeros(p)
    w[cols] = res.x[:-1]
    return w, float(res.x[-1])


def _weights(y: np.ndarray, class_weight: str | None) -> np.ndarray:
    if class_weight is None:
        return np.ones(len(y))
    counts = np.bincount(y, minlength=2).astype(np.float64)
    return (len(y) / (2.0 * counts))[y]


class TransferModel:
    """Within-sample features -> standardise -> prior + L2-penalised correction."""

    def __init__(self, config: TransferConfig | None = None) -> None:
        self.config = config or TransferConfig()
        self.builder = FeatureBuilder(self.config.families, self.config.min_fraction)
        self.universe: list[str] = []
        self.specs: list[FeatureSpec] = []
        self.prior_specs: list[FeatureSpec] = []
        self.best_params: dict[str, float] = {}
        self.inner_cv = ""
        self.train_x: np.ndarray | None = None  # raw features (training samples x features)
        self.train_y: np.ndarray | None = None
        self.train_cohorts: list[str] = []
        self._train_prior: np.ndarray | None = None
        self._fits: list[tuple[np.ndarray, ...]] = []
        self.cv_auroc: float | None = None
        self.inner_logit: np.ndarray | None = None  # inner LOCO held-out logit at the chosen C
        self._cache: dict[tuple[str, ...], tuple[np.ndarray, ...]] = {}

    # -- design matrix ------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def _prior_builder(self) -> FeatureBuilder:
        return FeatureBuilder(("sig",), self.config.min_fraction)

    def _raw(self, values: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, CoverageReport]:
        feats, rep = self.builder.compute(values, self.specs, self.universe)
        prior, prep = self._prior_builder().compute(values, self.prior_specs, self.universe)
        rep.features += prep.features
        return feats, prior, rep

    @staticmethod
    def _design(
        x: np.ndarray, prior: np.ndarray | None, mu: np.ndarray, sd: np.ndarray, pmu, psd
    ) -> np.ndarray:
        z = (x - mu) / sd
        if prior is None:
            return z
        pz = ((prior - pmu) / psd).mean(axis=1, keepdims=True)
        return np.hstack([pz, z])

    def _fit_columns(
        self,
        cols: np.ndarray,
        rows: np.ndarray,
        C: float,
        pcols: np.ndarray | None = None,
        init: np.ndarray | None = None,
    ) -> tuple[Any, ...]:
        """(mu, sd, pmu, psd, w, b, pcols) fitted on the given training rows, feature columns
        and prior columns (None = every prior signature; empty = no prior)."""
        assert self.train_x is not None and self.train_y is not None
        if pcols is None:
            pcols = np.arange(len(self.prior_specs))
        x = self.train_x[np.ix_(rows, cols)]
        p = None
        if len(pcols) and self._train_prior is not None:
            p = self._train_prior[np.ix_(rows, pcols)]
        y = self.train_y[rows]
        mu, sd = x.mean(axis=0), x.std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        pmu = psd = None
        if p is not None:
            pmu, psd = p.mean(axis=0), np.where(p.std(axis=0) > 1e-12, p.std(axis=0), 1.0)
        d = self._design(x, p, mu, sd, pmu, psd)
        free = np.zeros(d.shape[1], dtype=bool)
        if p is not None:
            free[0] = True
        elif C == 0:
            raise ExpressionError("C = 0 without a computable prior signature is a constant score")
        w, b = fit_l2_logistic(
            d, y.astype(np.float64), C, free, _weights(y, self.config.class_weight), init
        )
        return mu, sd, pmu, psd, w, b, pcols

    def _bags(
        self,
        cols: np.ndarray,
        C: float,
        pcols: np.ndarray | None = None,
        base: np.ndarray | None = None,
    ) -> list[tuple[Any, ...]]:
        """The fit(s) on the training rows ``base`` (default all): one, or ``n_bags`` on
        cohort-stratified bootstrap resamples of them."""
        if base is None:
            base = np.arange(len(self.train_y))  # type: ignore[arg-type]
        if self.config.n_bags <= 0:
            return [self._fit_columns(cols, base, C, pcols)]
        coh = np.asarray(self.train_cohorts)[base]
        out = []
        for k in range(self.config.n_bags):
            rng = np.random.default_rng(self.config.seed + k)
            rows = np.concatenate(
                [rng.choice(base[coh == c], (coh == c).sum()) for c in pd.unique(coh)]
            )
            if len(np.unique(self.train_y[rows])) < 2:  # type: ignore[index]
                continue
            out.append(self._fit_columns(cols, rows, C, pcols))
        return out

    # -- fit / predict ------------------------------------------------------------------------
    def fit(
        self,
        values: pd.DataFrame,
        labels: pd.Series | Sequence[int],
        cohorts: pd.Series | Sequence[str] | None = None,
    ) -> TransferModel:
        """Fit on the labelled samples (label -1 = unlabelled, excluded); C by inner LOCO."""
        y_all = np.asarray(labels, dtype=np.int64)
        coh_all = (
            np.asarray(cohorts, dtype=object) if cohorts is not None
            else np.full(len(values), "all", dtype=object)
        )  # fmt: skip
        if len(y_all) != len(values) or len(coh_all) != len(values):
            raise ExpressionError("labels/cohorts do not match the expression table length")
        keep = y_all >= 0
        values = values.loc[keep]
        self.universe = list(dict.fromkeys(normalise_symbol(g) for g in values.columns))
        self.specs = self.builder.define(self.universe)
        self.prior_specs = [
            s for s in self._prior_builder().define(self.universe)
            if s.name.split(":", 1)[1] in set(self.config.prior)
        ]  # fmt: skip
        if self.config.prior and not self.prior_specs:
            raise ExpressionError(f"none of the prior signatures {self.config.prior} is computable")
        feats, prior, _ = self._raw(values)
        self.train_x = feats[self.feature_names].to_numpy()
        self._train_prior = (
            (prior.to_numpy() * [s.sign for s in self.prior_specs]) if self.prior_specs else None
        )
        self.train_y = y_all[keep]
        self.train_cohorts = [str(c) for c in coh_all[keep]]
        if len(np.unique(self.train_y)) < 2:
            raise ExpressionError("training needs both responders and non-responders")
        self.best_params = {"C": self._select_C()}
        self._fits = self._bags(np.arange(len(self.specs)), self.best_params["C"])
        self._cache = {}
        return self

    def _select_C(self) -> float:
        y = self.train_y
        coh = np.asarray(self.train_cohorts)
        assert y is not None
        usable = [c for c in pd.unique(coh) if len(np.unique(y[coh == c])) == 2]
        Cs = sorted(self.config.Cs)
        if not self.prior_specs:  # C = 0 without a prior is a constant score
            Cs = [C for C in Cs if C > 0] or [1e-3]
        if len(Cs) == 1 or len(usable) < 3:
            self.inner_cv = "no inner selection (one C or < 3 usable cohorts)"
            return float(Cs[0])
        self.inner_cv = f"leave-one-cohort-out over {len(usable)} training cohorts"
        cols = np.arange(len(self.specs))
        scores: dict[float, list[np.ndarray]] = {C: [] for C in Cs}
        held: list[np.ndarray] = []
        for c in usable:
            tr, te = np.flatnonzero(coh != c), np.flatnonzero(coh == c)
            held.append(te)
            init = None
            for C in Cs:
                mu, sd, pmu, psd, w, b, _ = self._fit_columns(cols, tr, C, init=init)
                init = np.append(w, b)
                p = self._train_prior[te] if self.prior_specs else None
                scores[C].append(
                    self._design(self.train_x[np.ix_(te, cols)], p, mu, sd, pmu, psd) @ w + b
                )
        te_all = np.concatenate(held)

        def crit(sc: list[np.ndarray]) -> float:
            per = np.nanmean([_auroc(y[te], s) for te, s in zip(held, sc, strict=True)])
            return 0.5 * (per + _auroc(y[te_all], np.concatenate(sc)))

        best, best_val = Cs[0], -np.inf
        for C in Cs:
            val = crit(scores[C])
            if val > best_val + 1e-9:
                best, best_val = C, val
        if self.config.n_bags > 0:  # the bagged model's own inner score, at the chosen C
            p = self._train_prior
            scores[best] = [
                np.mean([self._design(self.train_x[np.ix_(te, cols)],
                                      None if p is None else p[te], *f[:4]) @ f[4] + f[5]
                         for f in self._bags(cols, best, base=np.flatnonzero(coh != c))], axis=0)
                for c, te in zip(usable, held, strict=True)
            ]  # fmt: skip
            best_val = crit(scores[best])
        self.inner_logit = np.full(len(y), np.nan)
        self.inner_logit[te_all] = np.concatenate(scores[best])
        self.cv_auroc = float(best_val)
        return float(best)

    def _fits_for(self, names: Sequence[str], prior_names: Sequence[str]) -> list[tuple]:
        key = (tuple(names), tuple(prior_names))
        full = (tuple(self.feature_names), tuple(s.name for s in self.prior_specs))
        if key == full:
            return self._fits
        if key not in self._cache:
            index = {n: i for i, n in enumerate(self.feature_names)}
            pindex = {s.name: i for i, s in enumerate(self.prior_specs)}
            cols = np.array([index[n] for n in names], dtype=np.int64)
            pcols = np.array([pindex[n] for n in prior_names], dtype=np.int64)
            self._cache[key] = self._bags(cols, self.best_params["C"], pcols)
        return self._cache[key]

    def decision_with_coverage(self, values: pd.DataFrame) -> tuple[np.ndarray, CoverageReport]:
        """Logit per sample and the coverage report. When some features (or prior signatures)
        cannot be computed, the model refitted (same C) on the computable ones scores the table."""
        if self.train_x is None:
            raise ExpressionError("transfer model used before fit")
        feats, prior, rep = self._raw(values)
        names = [n for n in self.feature_names if n in feats.columns]
        pnames = [s.name for s in self.prior_specs if s.name in prior.columns]
        if not pnames and (not names or self.best_params["C"] == 0):
            raise ExpressionError(f"no feature of the model is computable: {rep.summary()}")
        fits = self._fits_for(names, pnames)
        x = feats[names].to_numpy()
        signs = {s.name: s.sign for s in self.prior_specs}
        p = prior[pnames].to_numpy() * [signs[n] for n in pnames] if pnames else None
        z = np.mean([self._design(x, p, *f[:4]) @ f[4] + f[5] for f in fits], axis=0)
        return z, rep

    def predict_proba(self, values: pd.DataFrame, cohorts: Any = None) -> np.ndarray:
        """P(responder) per sample (``cohorts`` unused: every feature is within-sample)."""
        return 1.0 / (1.0 + np.exp(-self.decision_with_coverage(values)[0]))

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: numbers and gene names only, under a fixed ``kind``."""
        if self.train_x is None or self.train_y is None:
            raise ExpressionError("cannot serialise an unfitted transfer model")
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.config).items()}
        prior = self._train_prior
        return {
            "kind": KIND_MODEL,
            "version": _VERSION,
            "config": cfg,
            "universe": list(self.universe),
            "features": [s.to_dict() for s in self.specs],
            "prior_features": [s.to_dict() for s in self.prior_specs],
            "best_params": dict(self.best_params),
            "cv_auroc": self.cv_auroc,
            "inner_cv": self.inner_cv,
            "train_x": np.round(self.train_x, 6).tolist(),
            "train_prior": None if prior is None else np.round(prior, 6).tolist(),
            "train_y": [int(v) for v in self.train_y],
            "train_cohorts": list(self.train_cohorts),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransferModel:
        _check_kind(d, KIND_MODEL)
        try:
            raw = dict(d["config"])
            allowed = set(TransferConfig.__dataclass_fields__)
            cfg = {
                k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in allowed
            }
            model = cls(TransferConfig(**cfg))
            model.universe = [str(g) for g in d["universe"]]
            model.specs = [FeatureSpec.from_dict(s) for s in d["features"]]
            model.prior_specs = [FeatureSpec.from_dict(s) for s in d["prior_features"]]
            model.best_params = {"C": float(d["best_params"]["C"])}
            model.cv_auroc = d.get("cv_auroc")
            model.inner_cv = str(d.get("inner_cv", ""))
            model.train_x = np.asarray(d["train_x"], dtype=np.float64).reshape(-1, len(model.specs))
            tp = d.get("train_prior")
            model._train_prior = None if tp is None else np.asarray(tp, dtype=np.float64)
            model.train_y = np.asarray(d["train_y"], dtype=np.int64)
            model.train_cohorts = [str(c) for c in d["train_cohorts"]]
        except (KeyError, TypeError, ValueError, ExpressionError) as err:
            raise CheckpointError(f"malformed {KIND_MODEL} state ({err!r})") from err
        if len(model.train_x) != len(model.train_y):
            raise CheckpointError(f"malformed {KIND_MODEL} state: sample count mismatch")
        model._fits = model._bags(np.arange(len(model.specs)), model.best_params["C"])
        return model


class TransferEnsemble:
    """Mean probability of several :class:`TransferModel` (model types and/or seeds); with
    ``mode="first"`` the first member, in order, that can score the table scores it alone."""

    def __init__(self, configs: Sequence[TransferConfig], mode: str = "mean") -> None:
        if not configs:
            raise ExpressionError("an ensemble needs at least one member")
        if mode not in ("mean", "first"):
            raise ExpressionError(f"ensemble mode {mode!r} is not 'mean' or 'first'")
        self.configs = list(configs)
        self.mode = mode
        self.members: list[TransferModel] = []

    @property
    def best_params(self) -> dict[str, Any]:
        return {f"member{i}": m.best_params for i, m in enumerate(self.members)}

    def fit(self, values: pd.DataFrame, labels: Any, cohorts: Any = None) -> TransferEnsemble:
        self.members = [TransferModel(c).fit(values, labels, cohorts) for c in self.configs]
        return self

    def proba_with_coverage(self, values: pd.DataFrame) -> tuple[np.ndarray, list[CoverageReport]]:
        """Mean over the members that can score the table (a member with no computable feature
        is left out and its report says so); mode "first": the first that can, the reports
        being those of the members tried (the last one scored). An error when none can."""
        probs, reports, errors = [], [], []
        for m in self.members:
            try:
                z, rep = m.decision_with_coverage(values)
            except ExpressionError as err:
                errors.append(str(err))
                _, _, rep = m._raw(values)
                reports.append(rep)
                continue
            probs.append(1.0 / (1.0 + np.exp(-z)))
            reports.append(rep)
            if self.mode == "first":
                break
        if not probs:
            raise ExpressionError("no ensemble member can score the table: " + "; ".join(errors))
        return np.mean(probs, axis=0), reports

    def predict_proba(self, values: pd.DataFrame, cohorts: Any = None) -> np.ndarray:
        return self.proba_with_coverage(values)[0]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND_ENSEMBLE, "version": _VERSION, "mode": self.mode,
                "members": [m.to_dict() for m in self.members]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransferEnsemble:
        _check_kind(d, KIND_ENSEMBLE)
        members = [TransferModel.from_dict(m) for m in d.get("members", [])]
        if not members:
            raise CheckpointError(f"malformed {KIND_ENSEMBLE} state: no members")
        try:
            ens = cls([m.config for m in members], str(d.get("mode", "mean")))
        except ExpressionError as err:
            raise CheckpointError(f"malformed {KIND_ENSEMBLE} state ({err})") from err
        ens.members = members
        return ens


def _check_kind(d: Mapping[str, Any], kind: str) -> None:
    if not isinstance(d, Mapping) or d.get("kind") != kind or d.get("version") != _VERSION:
        got = d.get("kind") if isinstance(d, Mapping) else type(d).__name__
        raise CheckpointError(f"not a {kind} v{_VERSION} state (kind={got!r})")


def is_transfer_model(d: Any) -> bool:
    """True when a loaded JSON object is one of this module's models (fixed kind strings)."""
    return isinstance(d, Mapping) and d.get("kind") in KINDS


def load_transfer_model(d: Mapping[str, Any]) -> TransferModel | TransferEnsemble:
    """The model a JSON state describes; ``kind`` must be one of :data:`KINDS`."""
    if d.get("kind") == KIND_MODEL:
        return TransferModel.from_dict(d)
    if d.get("kind") == KIND_ENSEMBLE:
        return TransferEnsemble.from_dict(d)
    raise CheckpointError(f"kind {d.get('kind')!r} is not one of {sorted(KINDS)}")


def predict_transfer(
    model_dict: Mapping[str, Any], values: pd.DataFrame
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """P(responder) for every sample of a new table with a saved transfer model, and the coverage
    report of each member (which features were computable, which genes were missing). Missing
    genes are never filled: features that need them are left out and the model is refitted (same
    C) on the computable ones."""
    model = load_transfer_model(model_dict)
    if isinstance(model, TransferEnsemble):
        prob, reports = model.proba_with_coverage(values)
    else:
        z, rep = model.decision_with_coverage(values)
        prob, reports = 1.0 / (1.0 + np.exp(-z)), [rep]
    return prob, [r.to_dict() for r in reports]
