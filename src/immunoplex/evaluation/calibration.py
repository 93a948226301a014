"""Post-hoc calibration: prior-shift correction, temperature scaling, split-conformal sets.

All three are fitted on (or, for the prior shift, known before) held-out patients and stored in
the checkpoint as plain JSON-safe dicts (``Calibration.to_dict()``), so prediction never needs
the validation data again. A calibrated logit is ``(logit - offset) / temperature``:

- ``offset``: a loss that weights positives by ``w`` (``module.pos_weight``, "auto" =
  n_negative / n_positive) moves the fitted log-odds by ``log w``; subtracting it gives back
  probabilities for the training prevalence. Known from the loss, not fitted.
- ``temperature``: fitted on the held-out logits (NLL). With ``temperature="test"`` it is kept
  only when a likelihood-ratio test rejects T = 1 at ``level``: on 56-276 held-out patients a
  fitted T of 1.1-1.7 is mostly noise, and (docs/models.md, "Calibration") applying it made the
  feature models worse calibrated on new patients.

Binary convention: a logit (or probability) is for the *responder* class (label 1). A 2-D array
``(N, K)`` of logits is treated as multi-class and softmaxed (temperature scaling only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, log_softmax, softmax
from scipy.stats import chi2

from immunoplex.errors import ConfigError

RESPONDER = "responder"
NON_RESPONDER = "non-responder"
BOTH = "both"
EMPTY = "none"
SET_LABELS: tuple[str, ...] = (RESPONDER, NON_RESPONDER, BOTH, EMPTY)

# log T is searched in [log 1e-2, log 1e2]: T outside that range means the model is broken.
_LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))
TEMPERATURE_MODES = ("test", "fit", "none")


def _labelled(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop unlabelled rows (label < 0 or NaN) and check shapes."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if logits.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"calibration: {logits.shape[0]} logits but {labels.shape[0]} labels (must match)"
        )
    keep = np.isfinite(labels) & (labels >= 0)
    logits, labels = logits[keep], labels[keep].astype(np.int64)
    if logits.shape[0] == 0:
        raise ConfigError("calibration: no labelled samples to fit on")
    if not np.all(np.isfinite(logits)):
        raise ConfigError("calibration: logits contain NaN or inf")
    return logits, labels


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``logits / temperature``."""
    z = logits / temperature
    if z.ndim == 1:
        # log p(y) = log sigmoid(z) for y=1, log sigmoid(-z) for y=0
        signed = np.where(labels == 1, z, -z)
        return float(-np.mean(log_expit(signed)))
    logp = log_softmax(z, axis=1)
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the validation NLL of ``sigmoid(logit / T)`` (or softmax).

    Bounded 1-D optimisation over ``log T`` (Brent); unlabelled rows (label -1/NaN) are ignored.
    T > 1 softens an overconfident model, T < 1 sharpens an underconfident one.
    """
    x, y = _labelled(logits, labels)
    if x.ndim == 1 and np.unique(y).size < 2:
        raise ConfigError("calibration: temperature scaling needs both classes in the labels")
    res = minimize_scalar(
        lambda log_t: _nll(x, y, math.exp(log_t)),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(res.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities from temperature-scaled logits: p(responder) for 1-D, softmax rows for 2-D."""
    if not temperature > 0:
        raise ConfigError(f"calibration: temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return expit(z) if z.ndim == 1 else softmax(z, axis=1)


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Binary negative log-likelihood (log-loss) of p(responder) on labelled rows."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    keep = np.isfinite(y) & (y >= 0)
    p, y = p[keep], y[keep]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """Finite-sample split-conformal quantile: the ceil((n+1)(1-alpha))-th smallest score.

    Returns +inf when that rank exceeds n (too few calibration points for the requested
    coverage): every label is then included, which keeps the guarantee.
    """
    n = scores.size
    if n == 0:
        return math.inf
    k = math.ceil((n + 1) * (1 - alpha))
    if k > n:
        return math.inf
    return float(np.sort(scores)[max(k, 1) - 1])


@dataclass
class ConformalPredictor:
    """Split-conformal prediction sets for the binary responder/non-responder question.

    Score = 1 - p(true class) (LAC). A class is in the set when ``1 - p(class) <= threshold``.
    ``class_conditional=True`` (Mondrian) fits one threshold per class, so coverage holds within
    responders and within non-responders separately (at the cost of larger sets).
    Marginal coverage guarantee: P(true label in set) >= 1 - alpha for exchangeable data.
    """

    alpha: float = 0.1
    class_conditional: bool = False
    thresholds: dict[str, float] = field(default_factory=dict)  # {class name: score threshold}
    n_calibration: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"conformal: alpha must be in (0, 1), got {self.alpha}")

    @property
    def threshold(self) -> float:
        """The single threshold (marginal mode); the larger one in class-conditional mode."""
        if not self.thresholds:
            raise ConfigError("conformal: predictor is not fitted (call fit first)")
        return max(self.thresholds.values())

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> ConformalPredictor:
        """Fit the score threshold(s) on calibration p(responder) and labels (-1 rows ignored)."""
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        if p.shape != y.shape:
            raise ConfigError(f"conformal: {p.size} probabilities but {y.size} labels")
        keep = np.isfinite(y) & (y >= 0)
        p, y = p[keep], y[keep].astype(np.int64)
        if p.size == 0:
            raise ConfigError("conformal: no labelled samples to fit on")
        if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
            raise ConfigError("conformal: probabilities must be finite and within [0, 1]")
        scores = np.where(y == 1, 1.0 - p, p)
        if self.class_conditional:
            self.thresholds = {
                RESPONDER: _conformal_quantile(scores[y == 1], self.alpha),
                NON_RESPONDER: _conformal_quantile(scores[y == 0], self.alpha),
            }
        else:
            q = _conformal_quantile(scores, self.alpha)
            self.thresholds = {RESPONDER: q, NON_RESPONDER: q}
        self.n_calibration = int(p.size)
        return self

    def predict_sets(self, probs: np.ndarray) -> list[str]:
        """Prediction set per sample: "responder" | "non-responder" | "both" | "none"."""
        if not self.thresholds:
            raise ConfigError("conformal: predictor is not fitted (call fit first)")
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        has_r = (1.0 - p) <= self.thresholds[RESPONDER]
        has_n = p <= self.thresholds[NON_RESPONDER]
        out = np.where(
            has_r & has_n, BOTH, np.where(has_r, RESPONDER, np.where(has_n, NON_RESPONDER, EMPTY))
        )
        return out.tolist()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (infinite thresholds stored as None)."""
        return {
            "alpha": float(self.alpha),
            "class_conditional": bool(self.class_conditional),
            "thresholds": {
                k: (None if math.isinf(v) else float(v)) for k, v in self.thresholds.items()
            },
            "n_calibration": int(self.n_calibration),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalPredictor:
        """Inverse of ``to_dict``."""
        thr = {k: (math.inf if v is None else float(v)) for k, v in d.get("thresholds", {}).items()}
        return cls(
            alpha=float(d["alpha"]),
            class_conditional=bool(d.get("class_conditional", False)),
            thresholds=thr,
            n_calibration=int(d.get("n_calibration", 0)),
        )


def _set_contains(sets: Sequence[str], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(contains-true-label, labelled mask) for prediction-set strings and 1/0/-1 labels."""
    s = np.asarray([str(v).strip().lower() for v in sets], dtype=object)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise ConfigError(f"conformal: {s.size} prediction sets but {y.size} labels")
    bad = sorted({v for v in s.tolist() if v not in SET_LABELS})
    if bad:
        raise ConfigError(
            f"conformal: unknown prediction set value(s) {bad}; expected {SET_LABELS}"
        )
    lab = np.isfinite(y) & (y >= 0)
    hit = (s == BOTH) | ((s == RESPONDER) & (y == 1)) | ((s == NON_RESPONDER) & (y == 0))
    return hit & lab, lab


def coverage(sets: Sequence[str], labels: np.ndarray) -> float:
    """Fraction of labelled samples whose prediction set contains the true label."""
    hit, lab = _set_contains(sets, labels)
    if not lab.any():
        return math.nan
    return float(hit[lab].mean())


def set_size(sets: Sequence[str]) -> np.ndarray:
    """Number of labels in each prediction set (0, 1 or 2)."""
    sizes = {RESPONDER: 1, NON_RESPONDER: 1, BOTH: 2, EMPTY: 0}
    return np.asarray([sizes[str(v).strip().lower()] for v in sets], dtype=np.int64)


def conformal_summary(sets: Sequence[str], labels: np.ndarray) -> dict[str, Any]:
    """Coverage achieved (overall and per class), mean set size and set-type frequencies."""
    hit, lab = _set_contains(sets, labels)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    s = np.asarray([str(v).strip().lower() for v in sets], dtype=object)
    sizes = set_size(s.tolist())
    out: dict[str, Any] = {
        "n": int(s.size),
        "n_labelled": int(lab.sum()),
        "coverage": float(hit[lab].mean()) if lab.any() else None,
        "mean_set_size": float(sizes.mean()) if sizes.size else None,
        "set_frequency": {k: int((s == k).sum()) for k in SET_LABELS},
    }
    for name, cls in ((RESPONDER, 1), (NON_RESPONDER, 0)):
        m = lab & (y == cls)
        out[f"coverage_{name}"] = float(hit[m].mean()) if m.any() else None
    return out


@dataclass
class Calibration:
    """What the trainer stores in the checkpoint: the prior shift, a temperature and an optional
    conformal set. Calibrated p(responder) = sigmoid((logit - offset) / temperature)."""

    temperature: float = 1.0
    conformal: ConformalPredictor | None = None
    n_fit: int = 0
    nll_before: float | None = None
    nll_after: float | None = None
    offset: float = 0.0
    temperature_fitted: float | None = None  # the NLL optimum, kept or not
    temperature_lr_statistic: float | None = None  # 2 n (NLL(T=1) - NLL(T fitted)), chi2(1)

    def logits(self, logits: np.ndarray) -> np.ndarray:
        """Prior-corrected logits (the temperature is not applied)."""
        return np.asarray(logits, dtype=np.float64) - float(self.offset)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated p(responder) for 1-D logits."""
        return apply_temperature(self.logits(logits), self.temperature)

    def predict_sets(self, logits: np.ndarray) -> list[str]:
        """Conformal sets from logits (offset and temperature applied first); needs
        ``conformal``."""
        if self.conformal is None:
            raise ConfigError("calibration: no conformal predictor was fitted")
        return self.conformal.predict_sets(self.probabilities(logits))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: ``{"temperature": T, "offset": b, "conformal": {...} | None, ...}``."""
        return {
            "temperature": float(self.temperature),
            "offset": float(self.offset),
            "conformal": None if self.conformal is None else self.conformal.to_dict(),
            "n_fit": int(self.n_fit),
            "nll_before": self.nll_before,
            "nll_after": self.nll_after,
            "temperature_fitted": self.temperature_fitted,
            "temperature_lr_statistic": self.temperature_lr_statistic,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Inverse of ``to_dict``; missing keys take their defaults (a checkpoint written before
        the offset existed has none: 0)."""
        conf = d.get("conformal")
        return cls(
            temperature=float(d.get("temperature", 1.0)),
            conformal=None if conf is None else ConformalPredictor.from_dict(conf),
            n_fit=int(d.get("n_fit", 0)),
            nll_before=d.get("nll_before"),
            nll_after=d.get("nll_after"),
            offset=float(d.get("offset", 0.0)),
            temperature_fitted=d.get("temperature_fitted"),
            temperature_lr_statistic=d.get("temperature_lr_statistic"),
        )


def calibration_rule(
    settings: Any | None, pos_weight: float | None = None
) -> dict[str, float | str]:
    """``fit_calibration``'s keywords from ``module.calibration`` (configs/train.yaml): the
    temperature rule and its test level, and (given the loss's ``pos_weight``) the prior shift
    log(pos_weight) when ``undo_pos_weight`` (the default)."""
    c = settings or {}
    rule: dict[str, float | str] = {
        "temperature": str(c.get("temperature", "test")),
        "level": float(c.get("level", 0.05)),
    }
    if pos_weight is not None:
        undo = bool(c.get("undo_pos_weight", True))
        rule["offset"] = math.log(float(pos_weight)) if undo else 0.0
    return rule


def fit_calibration(
    logits: np.ndarray,
    labels: np.ndarray,
    alpha: float | None = 0.1,
    class_conditional: bool = False,
    *,
    offset: float = 0.0,
    fit_offset: float | np.ndarray | None = None,
    temperature: str = "test",
    level: float = 0.05,
) -> Calibration:
    """Fit the temperature, then (if ``alpha``) conformal sets on the calibrated probabilities.

    ``offset``: the prior shift of the model being calibrated (log pos_weight), subtracted from
    every logit it predicts. ``fit_offset``: that of the models that made ``logits`` (scalar or
    one per row; the cross-fit's fold models), ``offset`` when None.
    ``temperature``: "fit" keeps the NLL optimum; "test" keeps it only when the likelihood-ratio
    statistic 2 n (NLL(1) - NLL(T)) exceeds the chi2(1) quantile at 1 - ``level``, else T = 1;
    "none" keeps T = 1 (its optimum is still recorded).
    Temperature and conformal sets use the same patients; T is a single monotone parameter, so
    the conformal guarantee is practically unaffected (use disjoint subsets when n is very small).
    """
    if temperature not in TEMPERATURE_MODES:
        raise ConfigError(
            f"calibration: temperature={temperature!r}: use one of {', '.join(TEMPERATURE_MODES)}"
        )
    if not 0 < level < 1:
        raise ConfigError(f"calibration: level must be in (0, 1), got {level}")
    shift = np.asarray(offset if fit_offset is None else fit_offset, dtype=np.float64)
    if not np.all(np.isfinite(shift)):
        raise ConfigError("calibration: offset must be finite")
    raw, y = _labelled(logits, labels)
    if raw.ndim != 1:
        raise ConfigError("calibration: fit_calibration expects 1-D binary logits")
    n_rows = np.asarray(labels).reshape(-1).shape[0]
    if shift.ndim and shift.shape != (n_rows,):  # one per row (the cross-fit's fold models)
        raise ConfigError(f"calibration: {shift.size} fit offsets but {n_rows} labels (must match)")
    x, _ = _labelled(np.asarray(logits, dtype=np.float64) - shift, labels)
    t_opt = fit_temperature(x, y)
    at_one, at_opt = _nll(x, y, 1.0), _nll(x, y, t_opt)
    stat = max(0.0, 2.0 * y.size * (at_one - at_opt))
    keep = temperature == "fit" or (
        temperature == "test" and stat > float(chi2.ppf(1.0 - level, df=1))
    )
    t = t_opt if keep else 1.0
    conf = None
    if alpha is not None:
        conf = ConformalPredictor(alpha=alpha, class_conditional=class_conditional)
        conf.fit(apply_temperature(x, t), y)
    return Calibration(
        temperature=t,
        conformal=conf,
        n_fit=int(y.size),
        nll_before=_nll(raw, y, 1.0),  # the raw logits'
        nll_after=_nll(x, y, t),
        offset=float(offset),
        temperature_fitted=float(t_opt),
        temperature_lr_statistic=float(stat),
    )
