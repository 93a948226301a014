"""immunoplex-inspect and immunoplex-tile (the function the Hydra app wraps)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from immunoplex.cli.inspect import main as inspect_main
from immunoplex.cli.tile import tile_cohort
from immunoplex.errors import ManifestError
from immunoplex.tiles.grid import load_grid
from tests.io.conftest import CONFIGS, synthetic_image, write_ome


def test_inspect_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_ome(tmp_path / "s.ome.tif", synthetic_image(2, 128), ["DAPI", "CD8"], levels=2)
    assert inspect_main([str(p), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "ome-tiff" and info["channels"] == ["DAPI", "CD8"]
    assert info["levels"] == [[128, 128], [64, 64]]
    assert info["dtype"] == "uint16" and info["mpp"] == pytest.approx(0.5)
    assert inspect_main([str(p)]) == 0
    assert "channels (2): DAPI, CD8" in capsys.readouterr().out
    bad = tmp_path / "bad.tif"
    bad.write_text("nope")
    assert inspect_main([str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}: not a TIFF file (header b'nope')"


def _cohort(tmp_path: Path) -> Path:
    d = tmp_path / "cohort"
    (d / "slides").mkdir(parents=True)
    for i in range(2):
        write_ome(
            d / "slides" / f"s{i}.ome.tif",
            synthetic_image(3, 256, seed=i),
            ["DAPI", "PanCK", "CD8"],
            levels=2,
        )
    write_ome(
        d / "slides" / "nompp.ome.tif", synthetic_image(3, 256), ["DAPI", "PanCK", "CD8"], mpp=None
    )
    (d / "slides" / "broken.ome.tif").write_bytes(b"II*\x00garbage")
    pd.DataFrame(
        {
            "slide_id": ["s0", "s1", "nompp", "broken", "override"],
            "image": [
                "slides/s0.ome.tif",
                "slides/s1.ome.tif",
                "slides/nompp.ome.tif",
                "slides/broken.ome.tif",
                "slides/nompp.ome.tif",
            ],
            "mpp": [None, None, None, None, 0.5],
        }
    ).to_csv(d / "manifest.csv", index=False)
    return d / "manifest.csv"


def test_tile_cohort(tmp_path: Path) -> None:
    manifest = _cohort(tmp_path)
    out = tmp_path / "tiles"
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "tile",
            overrides=[
                f"manifest={manifest}",
                f"out_dir={out}",
                "workers=1",
                "progress=false",
                "tiling.tile_size=16",
            ],
        )
    summary = tile_cohort(cfg)
    assert sorted(r["slide_id"] for r in summary.done) == ["override", "s0", "s1"]
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["slide_id"].tolist() == ["nompp", "broken"]
    assert "no physical pixel size" in skipped["reason"][0]
    assert "broken.ome.tif" in skipped["reason"][1]
    grid = load_grid(out / "grids" / "s0.parquet")
    assert len(grid) > 0 and grid.params.tile_size == 16
    assert (out / "qc" / "s1.png").stat().st_size > 10_000
    again = tile_cohort(cfg)  # done slides are not redone; bad ones are retried
    assert again.already == 3 and len(again.skipped) == 2 and not again.done


def test_manifest_errors(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("id,image\na,x.tif\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['slide_id'\]"):
        tile_cohort({"manifest": str(m), "out_dir": str(tmp_path / "o"), "tiling": {}})


@pytest.mark.parametrize("suffix", [".tsv", ".parquet"])
def test_tile_cohort_reads_tsv_and_parquet_manifests(tmp_path: Path, suffix: str) -> None:
    """The README promises CSV, TSV and Parquet manifests; immunoplex-tile reads all three."""
    df = pd.read_csv(_cohort(tmp_path)).iloc[[0, 2, 4]]  # s0, nompp (no mpp), override (mpp)
    manifest = tmp_path / "cohort" / f"manifest{suffix}"
    if suffix == ".parquet":
        df.to_parquet(manifest, index=False)  # the empty mpp is a Parquet null
    else:
        df.to_csv(manifest, sep="\t", index=False)
    cfg = {
        "manifest": str(manifest),
        "out_dir": str(tmp_path / "o"),
        "tiling": {"tile_size": 16},
        "workers": 1,
        "progress": False,
    }
    summary = tile_cohort(cfg)
    assert sorted(r["slide_id"] for r in summary.done) == ["override", "s0"]
    assert [r["slide_id"] for r in summary.skipped] == ["nompp"]


def test_corrupt_parquet_manifest_is_one_line(tmp_path: Path) -> None:
    m = tmp_path / "m.parquet"
    m.write_bytes(b"PAR1 garbage")
    with pytest.raises(ManifestError) as err:
        tile_cohort({"manifest": str(m), "out_dir": str(tmp_path / "o"), "tiling": {}})
    assert str(err.value).startswith(f"{m}: cannot read manifest (")
