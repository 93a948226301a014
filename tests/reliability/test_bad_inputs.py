"""Issue 9.1: every kind of bad input, end to end through the public entry points.

Each case returns the one line a user sees (the error message, or the line of the end-of-run
"skipped" report) and the fragments it must contain: the file (and row/sample where there is
one) and the reason. The shared assertion checks the shape: non-empty, one line, names the file.
Nothing may be dropped or imputed silently: skipped things must appear in a report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from immunoplex.cli.tile import tile_cohort
from immunoplex.data.cohort import load_cohort
from immunoplex.data.datamodule import DataConfig, ResponseDataModule, SplitConfig
from immunoplex.data.splits import Split, make_split
from immunoplex.data.transforms import normalise_tiles
from immunoplex.errors import (
    ExpressionError,
    ImmunoplexError,
    ManifestError,
    SlideReadError,
    SplitError,
)
from immunoplex.expression.genes import harmonise_genes
from immunoplex.expression.io import read_expression
from immunoplex.io import open_slide
from immunoplex.paths import config_dir
from immunoplex.tiles.intensity import IntensityNorm
from tests.reliability.slides import (
    MARKERS,
    corrupt_tile_data,
    tissue_image,
    write_cohort,
    write_ome,
)

Outcome = tuple[str, list[str]]  # (the one line the user sees, fragments it must contain)


def _raises(kind: type[ImmunoplexError], fn: Callable[[], object]) -> str:
    with pytest.raises(kind) as err:
        fn()
    return str(err.value)


def _read_all(path: Path) -> None:
    with open_slide(path) as s:
        h, w = s.levels[0]
        s.read_region(0, 0, 0, h, w)


def _good_slide(tmp: Path, name: str = "good.ome.tif") -> Path:
    return write_ome(tmp / name, tissue_image())


def _data_module(manifest: Path, tmp: Path, **kw: object) -> ResponseDataModule:
    cfg = DataConfig(
        manifest=str(manifest),
        expression=str(manifest.parent / "expression.csv"),
        cache_dir=str(tmp / "cache"),
        markers=list(MARKERS),
        tile_size=16,
        mpp=1.0,
        split=SplitConfig(mode="fixed"),
        bag_size=16,
        batch_size=4,
        prep_workers=1,
        expression_norm="zscore",
        **kw,  # type: ignore[arg-type]
    )
    dm = ResponseDataModule(cfg)
    dm.prepare_data()
    dm.setup()
    return dm


# ---- slide files ---------------------------------------------------------------------------
def case_corrupt_tiff(tmp: Path) -> Outcome:
    p = corrupt_tile_data(_good_slide(tmp), tmp / "corrupt.ome.tif")
    msg = _raises(SlideReadError, lambda: _read_all(p))
    return msg, [str(p), "corrupt"]


def case_truncated_tiff(tmp: Path) -> Outcome:
    good = _good_slide(tmp)
    p = tmp / "cut.ome.tif"
    p.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    msg = _raises(SlideReadError, lambda: _read_all(p))
    return msg, [str(p), "truncated"]


def case_text_named_tif(tmp: Path) -> Outcome:
    p = tmp / "notes.tif"
    p.write_text("patient P1 responded well\n" * 20)
    msg = _raises(SlideReadError, lambda: open_slide(p))
    return msg, [str(p), "not a TIFF"]


def case_nan_in_float_image(tmp: Path) -> Outcome:
    data = tissue_image(dtype="float32")
    data[2, 40, 40] = np.nan
    p = write_ome(tmp / "nan.ome.tif", data)
    msg = _raises(SlideReadError, lambda: _read_all(p))
    return msg, [str(p), "NaN/inf", "CD8"]


def case_inf_in_float_image(tmp: Path) -> Outcome:
    data = tissue_image(dtype="float32")
    data[1, 50, 50] = np.inf
    p = write_ome(tmp / "inf.ome.tif", data)
    msg = _raises(SlideReadError, lambda: _read_all(p))
    return msg, [str(p), "NaN/inf", "PanCK"]


def case_missing_required_channel(tmp: Path) -> Outcome:
    """A slide lacking a required marker: refused when its tiles are built (data module)."""
    manifest = write_cohort(tmp, n_per_class=3)
    write_ome(tmp / "slides" / "s0.ome.tif", tissue_image(channels=2), channels=["DAPI", "CD8"])
    msg = _raises(ImmunoplexError, lambda: _data_module(manifest, tmp))
    return msg, [str(tmp / "slides" / "s0.ome.tif"), "PanCK"]


def case_bad_slides_skipped_by_datamodule(tmp: Path) -> Outcome:
    """on_bad_slide=skip: training goes on, and the skipped slide is in ``dm.skipped``."""
    manifest = write_cohort(
        tmp,
        n_per_class=3,
        extra_rows=[
            {
                "slide_id": "bad",
                "patient_id": "p4",
                "image": "slides/bad.tif",
                "label": 0,
                "cohort": "c1",
                "treatment": "anti-PD-1",
                "split": "train",
            },
        ],
    )
    (tmp / "slides" / "bad.tif").write_text("not an image")
    with pytest.raises(ImmunoplexError) as err:  # default on_bad_slide=error refuses the run
        _data_module(manifest, tmp)
    assert str(tmp / "slides" / "bad.tif") in str(err.value)
    dm = _data_module(manifest, tmp, on_bad_slide="skip")
    assert len(dm.skipped) == 1
    assert [st.slide_id for st in dm.records["p4"].slides] == ["s4"]  # its good slide is kept
    return dm.skipped[0], ["bad: ", str(tmp / "slides" / "bad.tif"), "not a TIFF"]


def case_bad_slide_skipped_by_tile_cli(tmp: Path) -> Outcome:
    manifest = write_cohort(
        tmp,
        n_per_class=1,
        extra_rows=[{"slide_id": "cut", "patient_id": "p9", "image": "slides/cut.ome.tif"}],
    )
    raw = (tmp / "slides" / "s0.ome.tif").read_bytes()
    (tmp / "slides" / "cut.ome.tif").write_bytes(raw[: len(raw) // 2])
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "tile",
            overrides=[
                f"manifest={manifest}",
                f"out_dir={tmp / 'tiles'}",
                "workers=1",
                "progress=false",
                "tiling.tile_size=16",
                "qc.enabled=false",
            ],
        )
    summary = tile_cohort(cfg)
    assert sorted(r["slide_id"] for r in summary.done) == ["s0", "s1"]
    report = pd.read_csv(tmp / "tiles" / "skipped.csv")
    assert report["slide_id"].tolist() == ["cut"]
    return str(report["reason"][0]), [str(tmp / "slides" / "cut.ome.tif"), "truncated"]


# ---- manifests -----------------------------------------------------------------------------
_HEADER = "slide_id,patient_id,image,label,cohort,treatment,split\n"


def _manifest(tmp: Path, body: str) -> Path:
    _good_slide(tmp, "a.ome.tif")
    _good_slide(tmp, "b.ome.tif")
    p = tmp / "manifest.csv"
    p.write_text(_HEADER + body)
    return p


def case_duplicated_slide_id(tmp: Path) -> Outcome:
    m = _manifest(tmp, "s1,p1,a.ome.tif,1,c,t,train\ns1,p2,b.ome.tif,0,c,t,train\n")
    return _raises(ManifestError, lambda: load_cohort(m)), [f"{m}:3", "duplicated slide_id"]


def case_patient_with_conflicting_rows(tmp: Path) -> Outcome:
    """The same patient id twice with different labels: a typo'd id, refused."""
    m = _manifest(tmp, "s1,p1,a.ome.tif,1,c,t,train\ns2,p1,b.ome.tif,0,c,t,train\n")
    return _raises(ManifestError, lambda: load_cohort(m)), [f"{m}:3", "conflicting label"]


def case_label_outside_allowed_set(tmp: Path) -> Outcome:
    m = _manifest(tmp, "s1,p1,a.ome.tif,1,c,t,train\ns2,p2,b.ome.tif,2,c,t,train\n")
    return _raises(ManifestError, lambda: load_cohort(m)), [
        f"{m}:3",
        "label '2' is not an accepted spelling",
    ]


def case_missing_image(tmp: Path) -> Outcome:
    m = _manifest(tmp, "s1,p1,a.ome.tif,1,c,t,train\ns2,p2,zz.ome.tif,0,c,t,train\n")
    return _raises(ManifestError, lambda: load_cohort(m)), [f"{m}:3", "'zz.ome.tif' not found"]


def case_empty_cohort(tmp: Path) -> Outcome:
    m = _manifest(tmp, "")
    return _raises(ManifestError, lambda: load_cohort(m)), [str(m), "empty cohort"]


def case_empty_cohort_tile_cli(tmp: Path) -> Outcome:
    m = _manifest(tmp, "")
    cfg = {"manifest": str(m), "out_dir": str(tmp / "o"), "tiling": {}, "progress": False}
    return _raises(ManifestError, lambda: tile_cohort(cfg)), [str(m), "empty cohort"]


def case_patient_in_train_and_test_manifest(tmp: Path) -> Outcome:
    """Two slides of one patient tagged train and test: leakage caught at the manifest."""
    m = _manifest(tmp, "s1,p1,a.ome.tif,1,c,t,train\ns2,p1,b.ome.tif,1,c,t,test\n")
    return _raises(ManifestError, lambda: load_cohort(m)), [f"{m}:3", "conflicting split"]


# ---- splits --------------------------------------------------------------------------------
def _patients(labels: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(len(labels))],
            "label": labels,
            "cohort": "c",
            "split": "",
        }
    )


def case_patient_in_train_and_test_split(tmp: Path) -> Outcome:
    labels = _patients([0, 1, 0, 1, 0, 1]).set_index("patient_id")["label"]
    split = Split("handmade", ("p0", "p1", "p2", "p3"), ("p4", "p5"), ("p1", "p4"))
    msg = _raises(SplitError, lambda: split.check(labels))
    return msg, ["split handmade", "'p1'", "train and test", "leakage"]


def case_fold_with_one_class(tmp: Path) -> Outcome:
    patients = _patients([1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    msg = _raises(SplitError, lambda: make_split(patients, mode="kfold", n_folds=3))
    return msg, ["3-fold CV needs >= 3 patients of each class", "[1, 9]"]


def case_fixed_test_with_one_class(tmp: Path) -> Outcome:
    patients = _patients([0, 1, 0, 1, 0, 1, 1, 1])
    patients.loc[6:, "split"] = "test"
    msg = _raises(SplitError, lambda: make_split(patients, mode="fixed", val_fraction=0.5))
    return msg, ["split fixed", "test has one class only", "label [1]"]


# ---- expression ----------------------------------------------------------------------------
def _expr(tmp: Path, body: str) -> Path:
    p = tmp / "expr.csv"
    p.write_text(body)
    return p


def case_expression_nan(tmp: Path) -> Outcome:
    p = _expr(tmp, "patient_id,CD8A,GZMA\np1,1,2\np2,NaN,3\n")
    return _raises(ExpressionError, lambda: read_expression(p)), [
        str(p),
        "sample 'p2' gene 'CD8A'",
        "missing (NaN)",
    ]


def case_expression_inf(tmp: Path) -> Outcome:
    p = _expr(tmp, "patient_id,CD8A,GZMA\np1,1,-inf\np2,2,3\n")
    return _raises(ExpressionError, lambda: read_expression(p)), [
        str(p),
        "sample 'p1' gene 'GZMA'",
        "infinite",
    ]


def case_expression_negative_counts(tmp: Path) -> Outcome:
    p = _expr(tmp, "patient_id,CD8A,GZMA\np1,4,2\np2,-3,3\n")
    return _raises(ExpressionError, lambda: read_expression(p, counts=True)), [
        str(p),
        "sample 'p2' gene 'CD8A'",
        "negative",
    ]


def case_expression_duplicated_sample(tmp: Path) -> Outcome:
    p = _expr(tmp, "patient_id,CD8A,GZMA\np1,1,2\np1,2,3\n")
    return _raises(ExpressionError, lambda: read_expression(p)), [
        str(p),
        "duplicated sample id 'p1'",
    ]


def case_expression_missing_genes(tmp: Path) -> Outcome:
    """A table lacking genes the model needs: refused, never silently zero-filled."""
    p = _expr(tmp, "patient_id,CD8A,GZMA\np1,1,2\np2,2,3\n")
    table = read_expression(p)
    genes = ["CD8A", "GZMA", "CXCL9"]
    msg = _raises(ExpressionError, lambda: harmonise_genes(table.values, genes))
    return msg, ["1 required gene(s) missing", "CXCL9"]


def case_expression_duplicated_genes(tmp: Path) -> Outcome:
    """Duplicated gene columns (case variants) are averaged - recorded, never hidden."""
    p = _expr(tmp, "patient_id,CD8A,cd8a,GZMA\np1,1,3,2\np2,2,4,3\n")
    table = read_expression(p)
    assert table.duplicated_genes == ["CD8A"]
    assert table.values.loc["p1", "CD8A"] == 2.0
    duplicated_list = ["CD8A", "GZMA", "CD8A"]
    msg = _raises(ExpressionError, lambda: harmonise_genes(table.values, duplicated_list))
    return msg, ["duplicated gene 'CD8A'"]


def case_expression_unknown_samples(tmp: Path) -> Outcome:
    """Expression rows matching no manifest patient are not used, and the log says which."""
    manifest = write_cohort(tmp, n_per_class=3)
    expr = pd.read_csv(tmp / "expression.csv")
    extra = expr.iloc[:1].assign(patient_id="ghost")
    pd.concat([expr, extra]).to_csv(tmp / "expression.csv", index=False)
    handler = _ListHandler()
    logging.getLogger("immunoplex.data.datamodule").addHandler(handler)
    try:
        dm = _data_module(manifest, tmp)
    finally:
        logging.getLogger("immunoplex.data.datamodule").removeHandler(handler)
    assert "ghost" not in dm.records
    lines = [r for r in handler.lines if "ghost" in r]
    assert len(lines) == 1
    return lines[0], [str(tmp / "expression.csv"), "match no patient", "'ghost'"]


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


CASES: dict[str, Callable[[Path], Outcome]] = {
    name[len("case_") :]: fn for name, fn in globals().items() if name.startswith("case_")
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line_naming_file_and_reason(name: str, tmp_path: Path) -> None:
    message, fragments = CASES[name](tmp_path)
    assert message.strip(), "empty message"
    assert "\n" not in message, f"multi-line message: {message!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---- all-zero channels are valid data ------------------------------------------------------
def test_all_zero_channel_normalises_without_nan(tmp_path: Path) -> None:
    """A stain that failed (all zeros) is data, not an error: finite values everywhere."""
    manifest = write_cohort(tmp_path, n_per_class=3)
    for i in (0, 3):
        data = tissue_image(seed=i)
        data[1] = 0  # PanCK all zero
        write_ome(tmp_path / "slides" / f"s{i}.ome.tif", data)
    dm = _data_module(manifest, tmp_path)
    st = dm.records["p0"].slides[0]
    assert np.asarray(st.tiles)[:, 1].max() == 0 and np.isfinite(st.low).all()
    assert np.isfinite(st.high).all()
    for stage in ("train", "val", "test"):
        for batch in getattr(dm, f"{stage}_dataloader")():
            x = normalise_tiles(batch)
            assert torch.isfinite(x).all()
    norm = IntensityNorm.fit(np.zeros((4, 3, 8, 8), np.uint16), present=[True, True, True])
    y = norm.apply_torch(torch.zeros(2, 3, 8, 8))
    assert torch.isfinite(y).all() and float(y.abs().max()) == 0.0
