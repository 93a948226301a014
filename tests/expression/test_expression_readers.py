"""Expression readers: every format, orientation detection, harmonisation, exact errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from immunoplex.errors import ExpressionError
from immunoplex.expression.genes import harmonise_genes, intersect_genes
from immunoplex.expression.io import ExpressionTable, detect_orientation, read_expression

GENES = ["CD8A", "GZMA", "PRF1", "IFNG", "STAT1"]
SAMPLES = ["s1", "s2", "s3", "s4"]


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        rng.random((len(SAMPLES), len(GENES))) * 10, index=SAMPLES, columns=GENES
    ).rename_axis("patient_id")


def _check(table: ExpressionTable, expected: pd.DataFrame) -> None:
    assert list(table.values.index) == list(expected.index)
    assert list(table.values.columns) == list(expected.columns)
    assert table.values.dtypes.unique().tolist() == [np.dtype("float64")]
    np.testing.assert_allclose(table.values.to_numpy(), expected.to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".csv.gz", ".txt"])
def test_text_samples_x_genes_roundtrip(tmp_path: Path, suffix: str) -> None:
    df = _frame()
    path = tmp_path / f"expr{suffix}"
    df.to_csv(path, sep="\t" if suffix in (".tsv", ".txt") else ",")
    table = read_expression(path)
    _check(table, df)
    assert table.source == path


def test_text_genes_x_samples_detected(tmp_path: Path) -> None:
    df = _frame()
    path = tmp_path / "expr.csv"
    df.T.rename_axis("gene").to_csv(path)
    _check(read_expression(path), df)


def test_orientation_from_gene_like_labels_without_header(tmp_path: Path) -> None:
    df = _frame()
    path = tmp_path / "expr.csv"
    df.T.rename_axis("").to_csv(path)  # blank header, 5 genes x 4 samples: gene names decide
    _check(read_expression(path), df)
    path2 = tmp_path / "expr2.csv"
    df.rename_axis("").to_csv(path2)
    _check(read_expression(path2), df)


def test_declared_orientation_overrides(tmp_path: Path) -> None:
    df = pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], index=["a", "b"], columns=["x", "y"])
    path = tmp_path / "e.csv"
    df.to_csv(path)
    with pytest.raises(ExpressionError, match="cannot tell whether rows are samples or genes"):
        read_expression(path)
    t = read_expression(path, orientation="genes_x_samples")
    assert list(t.values.index) == ["x", "y"] and list(t.values.columns) == ["A", "B"]
    assert t.values.loc["y", "A"] == 2.0


def test_shape_fallback_prefers_more_genes_than_samples() -> None:
    df = pd.DataFrame(np.ones((10, 3)), index=[f"g{i}" for i in range(10)], columns=["a", "b", "c"])
    assert detect_orientation(df) == "genes_x_samples"
    assert detect_orientation(df.T) == "samples_x_genes"


def test_id_column(tmp_path: Path) -> None:
    df = _frame().reset_index()
    df.insert(0, "row", range(len(df)))
    path = tmp_path / "e.csv"
    df.to_csv(path, index=False)
    t = read_expression(path, id_column="patient_id", orientation="samples_x_genes")
    assert list(t.values.columns) == ["ROW", *GENES]
    with pytest.raises(ExpressionError, match=r"id column 'nope' not found"):
        read_expression(path, id_column="nope")


def test_parquet_roundtrip_index_and_column(tmp_path: Path) -> None:
    df = _frame()
    p1 = tmp_path / "a.parquet"
    df.to_parquet(p1)
    _check(read_expression(p1), df)
    p2 = tmp_path / "b.parquet"
    df.reset_index().to_parquet(p2, index=False)
    _check(read_expression(p2), df)
    p3 = tmp_path / "c.parquet"
    df.T.rename_axis("gene_symbol").reset_index().to_parquet(p3, index=False)
    _check(read_expression(p3), df)


def _write_h5ad(path: Path, x: np.ndarray, obs: list[str], var: list[str], csr: bool) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        if csr:
            m = sparse.csr_matrix(x)
            g = f.create_group("X")
            g.attrs["encoding-type"] = "csr_matrix"
            g.attrs["encoding-version"] = "0.1.0"
            g.attrs["shape"] = np.array(x.shape)
            g["data"], g["indices"], g["indptr"] = m.data, m.indices, m.indptr
        else:
            f["X"] = x
        str_dt = h5py.string_dtype()
        for key, names in (("obs", obs), ("var", var)):
            grp = f.create_group(key)
            grp.attrs["_index"] = "_index"
            grp.attrs["encoding-type"] = "dataframe"
            grp.create_dataset("_index", data=np.array(names, dtype=object), dtype=str_dt)


@pytest.mark.parametrize("csr", [False, True])
def test_h5ad_dense_and_csr(tmp_path: Path, csr: bool) -> None:
    df = _frame()
    x = df.to_numpy().copy()
    x[0, 1] = 0.0  # an explicit zero, absent from the CSR data
    expected = pd.DataFrame(x, index=df.index, columns=df.columns)
    path = tmp_path / "e.h5ad"
    _write_h5ad(path, x, SAMPLES, [g.lower() for g in GENES], csr)
    _check(read_expression(path), expected)


def test_h5ad_gene_column_and_bad_shape(tmp_path: Path) -> None:
    path = tmp_path / "e.h5ad"
    _write_h5ad(path, np.ones((2, 2)), ["a", "b"], ["ENSG00000153563", "ENSG00000145649"], False)
    with h5py.File(path, "a") as f:
        f["var"].create_dataset(
            "symbol", data=np.array(["CD8A", "GZMA"], dtype=object), dtype=h5py.string_dtype()
        )
    assert read_expression(path, gene_column="symbol").genes == ["CD8A", "GZMA"]
    assert read_expression(path).genes == ["ENSG00000153563", "ENSG00000145649"]
    bad = tmp_path / "bad.h5ad"
    _write_h5ad(bad, np.ones((2, 3)), ["a", "b"], ["x", "y"], False)
    with pytest.raises(ExpressionError, match=r"X has shape \(2, 3\) but obs has 2 and var 2"):
        read_expression(bad)


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_exactly_repeated_gene_header_is_averaged(tmp_path: Path, suffix: str) -> None:
    """pandas would rename the second column CD8A.1; it must be averaged like any duplicate."""
    sep = "," if suffix == ".csv" else "\t"
    path = tmp_path / f"e{suffix}"
    rows = [["patient_id", "CD8A", "GZMB", "CD8A"], ["p1", "1", "2", "3"], ["p2", "5", "6", "9"]]
    path.write_text("".join(sep.join(r) + "\n" for r in rows))
    t = read_expression(path)
    assert t.genes == ["CD8A", "GZMB"] and t.duplicated_genes == ["CD8A"]
    assert t.values.loc["p1", "CD8A"] == 2.0 and t.values.loc["p2", "CD8A"] == 7.0


def test_duplicated_genes_averaged_and_case_harmonised(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("patient_id,CD8A,cd8a,GZMA\np1,1,3,5\np2,2,4,6\n")
    t = read_expression(path)
    assert t.genes == ["CD8A", "GZMA"]
    assert t.duplicated_genes == ["CD8A"]
    assert t.values.loc["p1", "CD8A"] == 2.0 and t.values.loc["p2", "CD8A"] == 3.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("patient_id,CD8A\np1,1\np2,\n", "sample 'p2' gene 'CD8A': value is missing (NaN)"),
        ("patient_id,CD8A\np1,1\np2,NaN\n", "sample 'p2' gene 'CD8A': value is missing (NaN)"),
        ("patient_id,CD8A\np1,inf\np2,1\n", "sample 'p1' gene 'CD8A': value is infinite"),
        ("patient_id,CD8A\np1,1\np1,2\n", "duplicated sample id 'p1'"),
        ("patient_id,CD8A,GZMA\np1,1,abc\n", "sample 'p1' gene 'GZMA': non-numeric value 'abc'"),
        ("patient_id,CD8A\n", "expression table is empty (0 samples x 1 genes)"),
    ],
)
def test_errors_name_file_and_cell(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(ExpressionError) as err:
        read_expression(path, orientation="samples_x_genes")
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_negative_values_only_rejected_for_counts(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("patient_id,CD8A\np1,-1.5\np2,2\n")
    assert read_expression(path).values.loc["p1", "CD8A"] == -1.5
    with pytest.raises(ExpressionError, match=r"sample 'p1' gene 'CD8A': negative value -1.5"):
        read_expression(path, counts=True)


def test_missing_genes_can_be_dropped_explicitly(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("patient_id,CD8A,GZMA\np1,1,\np2,2,3\n")
    t = read_expression(path, missing="drop_genes")
    assert t.genes == ["CD8A"] and t.dropped_genes == ["GZMA"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ExpressionError, match="expression file not found"):
        read_expression(tmp_path / "nope.csv")


def test_harmonise_genes_reorders_reports_and_never_imputes_silently() -> None:
    df = _frame()
    aligned, report = harmonise_genes(df, ["gzma", "CD8A"])
    assert list(aligned.columns) == ["GZMA", "CD8A"]
    assert report.missing == [] and set(report.dropped) == {"PRF1", "IFNG", "STAT1"}
    with pytest.raises(ExpressionError, match=r"1 required gene\(s\) missing: .*CD274"):
        harmonise_genes(df, ["CD8A", "CD274"])
    with pytest.raises(ExpressionError, match="needs fill_values"):
        harmonise_genes(df, ["CD8A", "CD274"], allow_missing=True)
    filled, rep = harmonise_genes(
        df, ["CD8A", "CD274"], allow_missing=True, fill_values={"CD274": 7.5}
    )
    assert rep.filled and rep.missing == ["CD274"]
    assert (filled["CD274"] == 7.5).all()
    np.testing.assert_array_equal(filled["CD8A"], df["CD8A"])


def test_intersect_genes_reports_what_each_cohort_lacks() -> None:
    a = pd.DataFrame(columns=["CD8A", "GZMA", "PRF1"])
    b = pd.DataFrame(columns=["prf1", "CD8A", "IFNG"])
    shared, missing = intersect_genes({"a": a, "b": b})
    assert shared == ["CD8A", "PRF1"]
    assert missing == {"a": ["IFNG"], "b": ["GZMA"]}
