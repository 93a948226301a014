"""Patient-level splits: fixed, stratified k-fold, nested CV and leave-one-cohort-out.

Splits are always over patients, never slides, so no patient's tiles can sit on both sides.
Unlabelled patients never enter validation or test and carry no loss in training.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from immunoplex.errors import SplitError

MODES = ("fixed", "kfold", "nested", "loco")


@dataclass(frozen=True)
class Split:
    """Patient ids per partition, plus a name for logs and result tables."""

    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def check(self, labels: pd.Series) -> None:
        """Refuse leakage and partitions where a metric or the loss would be meaningless."""
        parts = {"train": set(self.train), "val": set(self.val), "test": set(self.test)}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = parts[a] & parts[b]
            if both:
                raise SplitError(
                    f"split {self.name}: patient(s) {sorted(both)[:5]} in both {a} and {b} "
                    "(patient leakage)"
                )
        for part in ("train", "val", "test"):
            ids = list(parts[part])
            if not ids:
                if part == "train":
                    raise SplitError(f"split {self.name}: no training patients")
                continue
            y = labels.loc[ids]
            y = y[y >= 0]
            if part != "train" and len(y) != len(ids):
                raise SplitError(f"split {self.name}: unlabelled patient(s) in {part}")
            if y.nunique() < 2:
                raise SplitError(
                    f"split {self.name}: {part} has one class only ({len(y)} labelled patients, "
                    f"label {sorted(int(v) for v in y.unique())}); use fewer folds or another split"
                )


def _stratified_holdout(
    ids: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if fraction <= 0:
        return ids, np.array([], dtype=ids.dtype)
    try:
        a, b = train_test_split(ids, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as err:
        raise SplitError(f"cannot hold out a stratified {fraction:.0%} ({err})") from err
    return np.sort(a), np.sort(b)


def make_split(
    patients: pd.DataFrame,
    mode: str = "fixed",
    fold: int = 0,
    n_folds: int = 5,
    inner_fold: int = 0,
    n_inner_folds: int = 4,
    test_cohort: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    require_test: bool = True,
    crossfit_folds: int = 0,
    crossfit_fold: int | None = None,
) -> Split:
    """Build a split from a patient table with columns patient_id, label, cohort, split.

    A fixed split with no test patient is refused unless ``require_test=False`` (training a final
    model on every patient), so a manifest without a ``split`` column never trains untested.

    ``crossfit_folds`` K >= 2 pools the training and validation patients (the test patients stay
    out): ``crossfit_fold`` k in 0..K-1 validates on the k-th of K stratified folds of the pool
    and trains on the rest; -1 trains on the whole pool with no validation patient (the final
    fit of :mod:`immunoplex.training.crossfit`, calibrated on the folds' out-of-fold logits).
    """
    if mode not in MODES:
        raise SplitError(f"split mode {mode!r} is not one of {MODES}")
    table = patients.set_index("patient_id")
    labels = table["label"].astype(int)
    labelled = table[labels >= 0]
    unlabelled = table.index[labels < 0].to_numpy()
    ids = labelled.index.to_numpy()
    y = labelled["label"].to_numpy(dtype=int)
    if len(ids) == 0:
        raise SplitError("no labelled patients: nothing to train or evaluate on")

    if mode == "fixed":
        tag = labelled["split"].astype(str).to_numpy()
        test = ids[tag == "test"]
        val = ids[tag == "val"]
        rest = ids[(tag != "test") & (tag != "val")]
        if len(test) == 0 and require_test:
            raise SplitError(
                "split fixed: no labelled patient has split=test in the manifest; tag test "
                "patients in a split column, use data.split.mode=kfold, or set "
                "data.split.require_test=false to train on every patient"
            )
        if len(val) == 0:
            rest, val = _stratified_holdout(rest, labels.loc[rest].to_numpy(), val_fraction, seed)
        name = "fixed"
    elif mode in ("kfold", "nested"):
        if not 0 <= fold < n_folds:
            raise SplitError(f"fold {fold} outside 0..{n_folds - 1}")
        if np.bincount(y, minlength=2).min() < n_folds:
            raise SplitError(
                f"{n_folds}-fold CV needs >= {n_folds} patients of each class; "
                f"have {np.bincount(y, minlength=2).tolist()} (non-responders, responders)"
            )
        outer = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(ids, y))
        train_idx, test_idx = outer[fold]
        test = ids[test_idx]
        rest, y_rest = ids[train_idx], y[train_idx]
        if mode == "kfold":
            rest, val = _stratified_holdout(rest, y_rest, val_fraction, seed)
            name = f"kfold{n_folds}-{fold}"
        else:
            if not 0 <= inner_fold < n_inner_folds:
                raise SplitError(f"inner_fold {inner_fold} outside 0..{n_inner_folds - 1}")
            inner = list(
                StratifiedKFold(n_inner_folds, shuffle=True, random_state=seed + 1).split(
                    rest, y_rest
                )
            )
            tr, va = inner[inner_fold]
            rest, val = rest[tr], rest[va]
            name = f"nested{n_folds}x{n_inner_folds}-{fold}.{inner_fold}"
    else:  # loco
        cohorts = labelled["cohort"].astype(str)
        if test_cohort is None:
            names = sorted(cohorts.unique())
            if not 0 <= fold < len(names):
                raise SplitError(f"fold {fold} outside 0..{len(names) - 1} (cohorts {names})")
            test_cohort = names[fold]
        if test_cohort not in set(cohorts):
            raise SplitError(f"test cohort {test_cohort!r} not among {sorted(cohorts.unique())}")
        rest_pos, test_pos = cohort_holdout(cohorts, test_cohort)
        test, rest = ids[test_pos], ids[rest_pos]
        rest, val = _stratified_holdout(rest, labels.loc[rest].to_numpy(), val_fraction, seed)
        name = f"loco-{test_cohort}"
        # The held-out cohort stays unseen, its unlabelled patients included.
        cohort_of = table["cohort"].astype(str)
        unlabelled = np.array([p for p in unlabelled if cohort_of[p] != test_cohort])

    if crossfit_folds >= 2 and crossfit_fold is not None:
        pool = np.sort(np.concatenate([rest, val]))
        k = int(crossfit_fold)
        if k == -1:
            rest, val = pool, np.array([], dtype=pool.dtype)
        else:
            if not 0 <= k < crossfit_folds:
                raise SplitError(f"crossfit_fold {k} outside 0..{crossfit_folds - 1} (or -1)")
            y_pool = labels.loc[pool].to_numpy()
            if np.bincount(y_pool, minlength=2).min() < crossfit_folds:
                raise SplitError(
                    f"crossfit_folds={crossfit_folds} needs >= {crossfit_folds} training "
                    f"patients of each class; have {np.bincount(y_pool, minlength=2).tolist()}"
                )
            folds = StratifiedKFold(crossfit_folds, shuffle=True, random_state=seed + 2)
            tr, va = list(folds.split(pool, y_pool))[k]
            rest, val = pool[tr], pool[va]
        name = f"{name}+crossfit{crossfit_folds}-{'all' if k == -1 else k}"
    train = np.concatenate([rest, unlabelled]) if len(unlabelled) else rest
    split = Split(
        name=name,
        train=tuple(str(i) for i in train),
        val=tuple(str(i) for i in val),
        test=tuple(str(i) for i in test),
    )
    split.check(labels)
    return split


def n_folds_for(patients: pd.DataFrame, mode: str, n_folds: int) -> int:
    """How many folds a CV driver must run for this mode."""
    if mode == "loco":
        labelled = patients[patients["label"] >= 0]
        return int(labelled["cohort"].astype(str).nunique())
    return n_folds if mode in ("kfold", "nested") else 1


def loco_splits(cohorts: pd.Series) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(held-out cohort, train positions, test positions) for each cohort, in order of appearance."""
    arr = cohorts.astype(str).to_numpy()
    names = list(pd.unique(arr))
    if len(names) < 2:
        raise SplitError(f"leave-one-cohort-out needs >= 2 cohorts, got {names}")
    for name in names:
        train, test = cohort_holdout(cohorts, name)
        yield name, train, test


def cohort_holdout(cohorts: pd.Series | np.ndarray, held_out: str) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, test positions) holding out every sample of cohort ``held_out``."""
    arr = np.asarray(cohorts, dtype=str)
    return np.flatnonzero(arr != held_out), np.flatnonzero(arr == held_out)
