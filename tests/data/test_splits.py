import numpy as np
import pandas as pd
import pytest

from immunoplex.data.splits import Split, make_split, n_folds_for
from immunoplex.errors import SplitError


def _patients(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:4] = -1  # unlabelled
    return pd.DataFrame(
        {
            "patient_id": [f"p{i:03d}" for i in range(n)],
            "label": labels,
            "cohort": rng.choice(["A", "B", "C"], n),
            "split": np.where(np.arange(n) % 4 == 0, "test", "train"),
        }
    )


@pytest.mark.parametrize("mode", ["fixed", "kfold", "nested", "loco"])
def test_splits_are_disjoint_and_cover(mode: str) -> None:
    pts = _patients()
    s = make_split(pts, mode=mode, fold=1, n_folds=5, seed=3)
    tr, va, te = set(s.train), set(s.val), set(s.test)
    assert not (tr & va) and not (tr & te) and not (va & te)
    unlabelled = set(pts.loc[pts.label < 0, "patient_id"])
    assert not unlabelled & (va | te)  # unlabelled patients never enter val/test
    if mode in ("kfold", "nested"):
        assert tr | va | te == set(pts.patient_id)


def test_kfold_test_sets_partition_labelled_patients() -> None:
    pts = _patients()
    tests = [set(make_split(pts, mode="kfold", fold=k, n_folds=5).test) for k in range(5)]
    labelled = set(pts.loc[pts.label >= 0, "patient_id"])
    assert set().union(*tests) == labelled
    assert sum(len(t) for t in tests) == len(labelled)


def test_split_is_deterministic_for_a_seed() -> None:
    pts = _patients()
    assert make_split(pts, mode="kfold", seed=1) == make_split(pts, mode="kfold", seed=1)
    assert make_split(pts, mode="kfold", seed=1) != make_split(pts, mode="kfold", seed=2)


def test_loco_holds_out_a_whole_cohort() -> None:
    pts = _patients()
    s = make_split(pts, mode="loco", test_cohort="B")
    cohort = pts.set_index("patient_id")["cohort"]
    assert set(cohort.loc[list(s.test)]) == {"B"}
    assert "B" not in set(cohort.loc[list(s.train) + list(s.val)])
    assert n_folds_for(pts, "loco", 5) == 3


def test_leakage_is_refused() -> None:
    pts = _patients()
    labels = pts.set_index("patient_id")["label"]
    s = Split("bad", train=("p010", "p011"), val=("p012",), test=("p010",))
    with pytest.raises(SplitError, match="in both train and test \\(patient leakage\\)"):
        s.check(labels)


def test_one_class_fold_is_a_clear_error() -> None:
    pts = _patients()
    pts.loc[pts.label >= 0, "label"] = 1
    pts.loc[4:6, "label"] = 0
    with pytest.raises(SplitError, match="needs >= 5 patients of each class"):
        make_split(pts, mode="kfold", n_folds=5)
    with pytest.raises(SplitError, match="one class only"):
        make_split(pts, mode="fixed", val_fraction=0.1)


def test_fixed_split_without_test_patients_is_refused() -> None:
    df = _patients().assign(split="train")
    with pytest.raises(SplitError, match="no labelled patient has split=test"):
        make_split(df, mode="fixed")
    s = make_split(df, mode="fixed", require_test=False)  # a final model on every patient
    assert s.test == () and len(s.train) + len(s.val) == len(df)


@pytest.mark.parametrize("mode", ["fixed", "kfold"])
def test_crossfit_folds_partition_train_and_val_and_keep_the_test(mode: str) -> None:
    pts = _patients()
    plain = make_split(pts, mode=mode, fold=1, seed=3)
    pool = set(plain.train) | set(plain.val)
    unlabelled = set(pts.loc[pts.label < 0, "patient_id"])
    held = []
    for k in range(4):
        s = make_split(pts, mode=mode, fold=1, seed=3, crossfit_folds=4, crossfit_fold=k)
        assert s.test == plain.test  # the test patients never enter a fit
        assert set(s.train) | set(s.val) == pool
        assert not set(s.train) & set(s.val) and not unlabelled & set(s.val)
        assert s.name.endswith(f"+crossfit4-{k}")
        held.append(set(s.val))
    assert set().union(*held) == pool - unlabelled  # each labelled patient left out once
    assert sum(len(h) for h in held) == len(pool - unlabelled)
    final = make_split(pts, mode=mode, fold=1, seed=3, crossfit_folds=4, crossfit_fold=-1)
    assert set(final.train) == pool and final.val == () and final.test == plain.test
    # without a fold chosen (the driver's own config) the split is the plain one
    assert make_split(pts, mode=mode, fold=1, seed=3, crossfit_folds=4) == plain
    with pytest.raises(SplitError, match="crossfit_fold 4 outside"):
        make_split(pts, mode=mode, fold=1, seed=3, crossfit_folds=4, crossfit_fold=4)
