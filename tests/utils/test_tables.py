"""``utils.tables.read_table``: the one reader for manifests and small tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from immunoplex.errors import ManifestError
from immunoplex.utils.tables import read_table, table_columns

FRAME = pd.DataFrame(
    {"slide_id": ["s1", "007"], "label": ["1", ""], "age": ["61.5", "NA"], "note": ["a,b", "x"]}
)


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.txt", "t.csv.gz", "t.tsv.gz", "t.parquet"])
def test_every_format_reads_the_same_strings(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".parquet"):
        FRAME.to_parquet(path, index=False)
    else:
        FRAME.to_csv(path, index=False, sep="," if ".csv" in name else "\t")
    got = read_table(path)
    pd.testing.assert_frame_equal(got, FRAME)  # "007" stays text, "" and "NA" are not NaN
    assert table_columns(path) == list(FRAME.columns)
    assert read_table(path, columns=["label"]).columns.tolist() == ["label"]


def test_parquet_nulls_and_numbers_become_text(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pd.DataFrame({"id": ["a", None], "mpp": [0.5, None], "n": [1, 2]}).to_parquet(path)
    got = read_table(path)
    assert got.to_dict("list") == {"id": ["a", ""], "mpp": ["0.5", ""], "n": ["1", "2"]}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"PAR1 this is not parquet", "cannot read manifest ("),
        (b"", "cannot read manifest (the file is empty"),
    ],
)
def test_unreadable_tables_are_one_line_naming_the_file(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / ("m.parquet" if content else "m.csv")
    path.write_bytes(content)
    with pytest.raises(ManifestError) as err:
        read_table(path, "manifest")
    msg = str(err.value)
    assert msg.startswith(f"{path}: {reason}") and "\n" not in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="clinical table not found"):
        read_table(tmp_path / "nope.tsv", "clinical table")
