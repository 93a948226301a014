from pathlib import Path

import pytest

from immunoplex.data.cohort import load_cohort, parse_label
from immunoplex.errors import ManifestError

HEADER = "slide_id,patient_id,image,label,cohort,treatment,sclever1,split\n"


def _write(tmp_path: Path, rows: str, header: str = HEADER, touch: bool = True) -> Path:
    (tmp_path / "slides").mkdir(exist_ok=True)
    for name in ("a.tif", "b.tif", "c.tif", "d.tif"):
        if touch:
            (tmp_path / "slides" / name).write_bytes(b"")
    path = tmp_path / "manifest.csv"
    path.write_text(header + rows)
    return path


def test_patients_join_slides(tmp_path: Path) -> None:
    m = _write(
        tmp_path,
        "s1,p1,slides/a.tif,1,c1,anti-PD-1,2.5,train\n"
        "s2,p1,slides/b.tif,1,c1,anti-PD-1,2.5,train\n"
        "s3,p2,slides/c.tif,NR,c1,anti-PD-1,,test\n"
        "s4,p3,slides/d.tif,,c2,anti-PD-1,1.0,train\n",
    )
    c = load_cohort(m, clinical_columns=["sclever1"])
    assert list(c.patients["patient_id"]) == ["p1", "p2", "p3"]
    assert list(c.patients["label"]) == [1, 0, -1]
    assert list(c.patients["n_slides"]) == [2, 1, 1]
    assert c.slides["image_path"].iloc[0] == (tmp_path / "slides" / "a.tif").resolve()
    assert c.patients["sclever1"].isna().tolist() == [False, True, False]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            "s1,p1,slides/a.tif,1,c,t,1,train\ns1,p2,slides/b.tif,0,c,t,1,train\n",
            "manifest.csv:3: duplicated slide_id 's1' (rows [2, 3])",
        ),
        (
            "s1,p1,slides/a.tif,maybe,c,t,1,train\n",
            "manifest.csv:2: label 'maybe' is not an accepted spelling",
        ),
        (
            "s1,p1,slides/a.tif,1,c,t,1,train\ns2,p1,slides/b.tif,0,c,t,1,train\n",
            "manifest.csv:3: patient 'p1' has conflicting label values [1, 0]",
        ),
        ("s1,p1,slides/zz.tif,1,c,t,1,train\n", "manifest.csv:2: image 'slides/zz.tif' not found"),
        (
            "s1,p1,slides/a.tif,1,c,t,abc,train\n",
            "manifest.csv:2: sclever1 value 'abc' is not a number",
        ),
        (
            "s1,p1,slides/a.tif,1,c,t,1,holdout\n",
            "manifest.csv:2: split 'holdout' is not train/val/test/empty",
        ),
        ("s1,,slides/a.tif,1,c,t,1,train\n", "manifest.csv:2: empty patient_id"),
    ],
)
def test_bad_manifest_rows_name_file_and_row(tmp_path: Path, rows: str, message: str) -> None:
    m = _write(tmp_path, rows)
    with pytest.raises(ManifestError) as err:
        load_cohort(m, clinical_columns=["sclever1"])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_columns_and_empty(tmp_path: Path) -> None:
    m = _write(tmp_path, "p1,slides/a.tif\n", header="patient_id,image\n")
    with pytest.raises(ManifestError, match="missing required column"):
        load_cohort(m)
    m = _write(tmp_path, "", header=HEADER)
    with pytest.raises(ManifestError, match="empty cohort"):
        load_cohort(m)


def test_parse_label_vocabulary() -> None:
    assert parse_label("R", "x") == 1
    assert parse_label("responder", "x") == 1
    assert parse_label("NR", "x") == 0
    assert parse_label(float("nan"), "x") == -1
    assert parse_label("", "x") == -1
    with pytest.raises(ManifestError, match="x: label '2'"):
        parse_label("2", "x")


@pytest.mark.parametrize("value", ["-1", "NA", "None", "unknown", "nan"])
def test_unlabelled_is_only_an_empty_cell(value: str) -> None:
    """A 1/-1 cohort must not silently lose its non-responders: -1, NA, None... are refused."""
    with pytest.raises(ManifestError, match=f"row 7: label '{value}' is not an accepted spelling"):
        parse_label(value, "row 7")


def test_one_minus_one_manifest_is_refused_naming_the_row(tmp_path: Path) -> None:
    m = _write(tmp_path, "s1,p1,slides/a.tif,1,c,t,1,train\ns2,p2,slides/b.tif,-1,c,t,1,test\n")
    with pytest.raises(ManifestError, match=r"manifest.csv:3: label '-1' is not an accepted"):
        load_cohort(m)
