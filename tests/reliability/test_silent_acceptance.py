"""Issue 14.4: inputs that used to be accepted silently are errors naming the file and row.

Table-driven like ``test_cli_errors``: each case runs a real console script in its own empty
working directory and checks exit 2, exactly one ``error:`` line naming the file (and row or
column), no traceback, no Hydra hint and no file written in the working directory (tile caches go
to a shared folder outside it). The cases that need a trained checkpoint or a training run are
marked slow.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.reliability.test_cli_errors import Case, Result, _env, _files, check_one_line, command

CHANNELS = ("DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b")  # the tiny cohort's panel


# --------------------------------------------------------------------------------- bad slides
def _ome(path: Path, data: np.ndarray, tile: int | None = 32) -> Path:
    meta = {"axes": "CYX", "Channel": {"Name": list(CHANNELS)}, "PhysicalSizeX": 0.5}
    meta["PhysicalSizeY"] = 0.5
    kw: dict[str, object] = {"photometric": "minisblack", "compression": "zlib"}
    if tile:
        kw["tile"] = (tile, tile)
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, metadata=meta, **kw)
    return path


def all_zero_slide(path: Path) -> Path:
    return _ome(path, np.zeros((len(CHANNELS), 256, 256), np.uint16))


def one_pixel_slide(path: Path) -> Path:
    return _ome(path, np.full((len(CHANNELS), 1, 1), 500, np.uint16), tile=None)


def sparse_slide(path: Path) -> Path:
    """A 1024 x 1024 tiled slide whose tile offsets/byte counts are 0 except the first tile of
    each channel (99.98% of its tiles missing: they would read as zeros)."""
    rng = np.random.default_rng(0)
    _ome(path, rng.integers(100, 900, (len(CHANNELS), 1024, 1024)).astype(np.uint16), tile=16)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            for tag_name in ("TileOffsets", "TileByteCounts"):
                tag = page.tags[tag_name]
                values = list(tag.value)
                tag.overwrite([values[0]] + [0] * (len(values) - 1))
    return path


def colliding_folder(path: Path) -> Path:
    """A folder slide with both ``CD8.tif`` and ``cd8.tif``."""
    path.mkdir(parents=True)
    img = np.full((64, 64), 300, np.uint16)
    for name in (*CHANNELS, "cd8"):
        tifffile.imwrite(
            path / f"{name}.tif", img, resolution=(2.0, 2.0), resolutionunit="MICROMETER"
        )
    return path


# ------------------------------------------------------------------------------ manifests
def _rows(cohort: Path) -> list[list[str]]:
    with open(cohort / "manifest.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    img = header.index("image")
    for r in body:
        r[img] = str(cohort / r[img])
    return [header, *body]


def _write(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def short_row_manifest(work: Path, cohort: Path) -> None:
    rows = _rows(cohort)
    rows[2] = rows[2][:3]  # file row 3: slide_id, patient_id, image only
    _write(work / "manifest.csv", rows)


def duplicated_label_manifest(work: Path, cohort: Path) -> None:
    rows = _rows(cohort)
    _write(work / "manifest.csv", [[*r, r[rows[0].index("label")]] for r in rows])


def bad_slide_manifest(make: Callable[[Path], Path]) -> Callable[[Path, Path], None]:
    """The cohort with its first train slide replaced by ``make``'s slide (listed first, so the
    run stops before tiling anything else)."""

    def setup(work: Path, cohort: Path) -> None:
        rows = _rows(cohort)
        header, body = rows[0], rows[1:]
        bad = make(work / "bad_slide")
        body[0][header.index("image")] = str(bad)
        _write(work / "manifest.csv", [header, *body])

    return setup


def _train(cache: Path, *extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda w, c: [
        f"data.root={c}",
        "data=manifest",
        f"data.manifest={w / 'manifest.csv'}",
        f"data.expression={c / 'expression.csv'}",
        "data.clinical_columns=[sclever1]",
        f"data.cache_dir={cache}",
        "trainer=cpu",
        "trainer.max_epochs=1",
        *extra,
    ]


def _tile(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda w, c: [f"manifest={w / 'manifest.csv'}", f"out_dir={w / 'out'}", *extra]


# Each: (id, app, args, fragment in the error line, setup(work, cohort))
def cases(cache: Path) -> list[tuple[Case, Callable[[Path, Path], None] | None]]:
    return [
        (Case("train-short-row", "train", _train(cache), "manifest.csv:3: short row"),
         short_row_manifest),
        (Case("tile-short-row", "tile", _tile(), "manifest.csv:3: short row"),
         short_row_manifest),
        (Case("train-duplicated-label", "train", _train(cache), "duplicated column 'label'"),
         duplicated_label_manifest),
        (Case("tile-duplicated-label", "tile", _tile(), "duplicated column 'label'"),
         duplicated_label_manifest),
        (Case("train-all-zero-slide", "train", _train(cache), "every pixel of every channel is 0"),
         bad_slide_manifest(lambda p: all_zero_slide(p.with_suffix(".ome.tif")))),
        (Case("train-1x1-slide", "train", _train(cache), "smaller than one tile"),
         bad_slide_manifest(lambda p: one_pixel_slide(p.with_suffix(".ome.tif")))),
        (Case("train-sparse-tiff", "train", _train(cache), "holds no data for 99.9"),
         bad_slide_manifest(lambda p: sparse_slide(p.with_suffix(".ome.tif")))),
        (Case("train-case-colliding-channels", "train", _train(cache), "CD8.tif and cd8.tif"),
         bad_slide_manifest(colliding_folder)),
        # configuration keys that moved to the tiling group (cli/checks.py validate_train)
        (Case("train-tiling-tile-size-0", "train", _train(cache, "tiling.tile_size=0"),
              "tiling.tile_size"), None),
        (Case("train-tiling-mpp-negative", "train", _train(cache, "tiling.mpp=-1"),
              "tiling.mpp"), None),
        (Case("embed-shard-out-of-range", "embed",
              _train(cache, "embed.shard=1", "embed.num_shards=1"), "embed.shard"), None),
    ]  # fmt: skip


def _run(
    case: Case, setup: Callable[[Path, Path], None] | None, work: Path, cohort: Path
) -> Result:
    work.mkdir(parents=True)
    if setup is not None:
        setup(work, cohort)
    before = _files(work)
    proc = subprocess.run(
        [*command(case.app), *case.args(work, cohort)],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=900,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, before, _files(work))


@pytest.fixture(scope="module")
def results(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    root = tmp_path_factory.mktemp("silent_acceptance")
    table = cases(root / "shared_cache")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {c.id: pool.submit(_run, c, s, root / c.id, tiny_cohort) for c, s in table}
        return {k: f.result() for k, f in futures.items()}


CASE_IDS = [c.id for c, _ in cases(Path("."))]


@pytest.mark.slow  # eleven CLI start-ups (torch, Lightning): minutes on 2 busy cores
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_silent_acceptance_is_one_line(case_id: str, results: dict[str, Result]) -> None:
    case = next(c for c, _ in cases(Path(".")) if c.id == case_id)
    line = check_one_line(results[case_id], case.fragment)
    if "slide" in case_id or "channels" in case_id:
        assert "bad_slide" in line  # names the file


# ------------------------------------------------------------------- in-process reader checks
def test_reader_rows_and_columns(tmp_path: Path) -> None:
    from immunoplex.errors import ManifestError
    from immunoplex.utils.tables import read_table

    table = {
        "short.csv": (
            "a,b,c\n1,2,3\n4,5\n",
            "short.csv:3: short row: 2 field(s), the header has 3",
        ),
        "long.tsv": ("a\tb\n1\t2\t3\n", "long.tsv:2: long row: 3 field(s), the header has 2"),
        "dup.csv": ("a,label,label\n1,2,3\n", "duplicated column 'label'"),
    }
    for name, (text, fragment) in table.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ManifestError, match=None) as info:
            read_table(tmp_path / name, "manifest")
        assert fragment in str(info.value) and str(tmp_path / name) in str(info.value)
    # blank lines and quoted commas/newlines are fine
    (tmp_path / "ok.csv").write_text('a,b\n"x,y",2\n\n"two\nlines",3\n')
    assert read_table(tmp_path / "ok.csv")["b"].tolist() == ["2", "3"]


def test_slide_id_nan_is_an_id_for_tile_and_train(tiny_cohort: Path, tmp_path: Path) -> None:
    """``nan`` is a slide id like any other for immunoplex-tile and for training's reader."""
    from immunoplex.data.cohort import load_cohort

    rows = _rows(tiny_cohort)
    header = rows[0]
    rows[1][header.index("slide_id")] = "nan"
    manifest = _write(tmp_path / "manifest.csv", rows)
    coh = load_cohort(manifest, ["sclever1"])
    assert "nan" in coh.slides["slide_id"].tolist()
    _write(tmp_path / "one.csv", [header, rows[1]])
    proc = subprocess.run(
        [*command("tile"), f"manifest={tmp_path / 'one.csv'}", f"out_dir={tmp_path / 'tiles'}"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "tiles" / "grids" / "nan.parquet").is_file()


def test_clinical_table_without_the_models_column(tmp_path: Path) -> None:
    from immunoplex.errors import ManifestError
    from immunoplex.inference.inputs import read_clinical_table

    (tmp_path / "clinical.csv").write_text("patient_id,age\nP1,50\n")
    with pytest.raises(ManifestError) as info:
        read_clinical_table(tmp_path / "clinical.csv", ["sclever1"])
    assert f"{tmp_path / 'clinical.csv'}: clinical table has no column 'sclever1'" in str(
        info.value
    )


def test_documented_override_forms_compose() -> None:
    """README/docs forms: ``data.aliases={CD8:[CD8alpha]}`` adds to the shipped alias table and
    ``embed.shard=0 embed.num_shards=1`` are valid (configs/train.yaml has an ``embed`` node)."""
    from hydra import compose, initialize_config_dir

    from immunoplex.cli.checks import validate_train
    from immunoplex.data.datamodule import data_config_from
    from immunoplex.io.panel import Panel
    from immunoplex.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["data.aliases={CD8:[CD8alpha]}", "embed.shard=0",
                                          "embed.num_shards=1"])  # fmt: skip
    validate_train(cfg)
    dc = data_config_from(cfg.data, 0)
    panel = Panel(list(dc.markers), aliases=dict(dc.aliases))
    assert panel.canonical("CD8alpha") == "CD8"  # the user's entry
    assert panel.canonical("PanKRT") == "PanCK"  # the shipped table still applies
    assert (cfg.embed.shard, cfg.embed.num_shards) == (0, 1)


def test_failed_run_directories(tmp_path: Path) -> None:
    """A failed run's directory: bookkeeping only -> removed; anything of value -> <dir>.failed;
    out_dir apps (predict, synth...) keep their work for the resuming re-run."""
    from immunoplex.cli.common import (
        _first_missing,
        _remove_empty_parents,
        remove_temporaries,
        retire_failed_run,
    )

    nested = tmp_path / "root" / "runs" / "train" / "2026_local"
    first = _first_missing(nested)
    (nested / ".hydra").mkdir(parents=True)
    retire_failed_run(nested)
    _remove_empty_parents(nested, first)
    assert not (tmp_path / "root").exists()  # and the parents it created

    empty = tmp_path / "run1"
    (empty / ".hydra").mkdir(parents=True)
    (empty / "train.log").write_text("x")
    (empty / "config.yaml").write_text("x")
    (empty / "logs").mkdir()
    (empty / "logs" / "hparams.yaml").write_text("x")
    assert retire_failed_run(empty) is None and not empty.exists()
    partial = tmp_path / "run2"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert retire_failed_run(partial) == tmp_path / "run2.failed"
    assert (tmp_path / "run2.failed" / "checkpoints" / "last.ckpt").is_file()
    kept = tmp_path / "out"
    (kept / "patients").mkdir(parents=True)
    (kept / "patients" / "P1.json").write_text("{}")
    assert retire_failed_run(kept, keep=True) == kept and kept.is_dir()
    (kept / "slides" / "S1").mkdir(parents=True)
    (kept / "slides" / "S1" / ".heatmap.k2j3h4.tmp.png").write_bytes(b"x")
    (kept / ".predictions.abc.tmp.csv").write_text("x")
    (kept / "slides" / "S1" / "heatmap.png").write_bytes(b"x")
    assert remove_temporaries(kept) == 2
    assert (kept / "slides" / "S1" / "heatmap.png").is_file()


# ------------------------------------------------------------------------ need a checkpoint
@pytest.fixture(scope="module")
def ckpt(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.predict.conftest import train_checkpoint

    return train_checkpoint(tiny_cohort, tmp_path_factory.mktemp("silent_run"), epochs=1)


def _predict(ckpt: Path, cohort: Path, out: Path, *extra: str, umask: int | None = None) -> Result:
    proc = subprocess.run(
        [*command("predict"), f"ckpt={ckpt}", f"input={cohort / 'manifest.csv'}",
         f"out_dir={out}", "progress=false", *extra],
        cwd=out.parent,
        env=_env(out.parent),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )  # fmt: skip
    return Result(proc.returncode, proc.stdout, proc.stderr, set(), set())


@pytest.mark.slow
def test_predict_clinical_table_without_the_column(
    ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    (tmp_path / "clinical.csv").write_text("patient_id,age\nP0001,50\n")
    res = _predict(ckpt, tiny_cohort, tmp_path / "out", f"clinical={tmp_path / 'clinical.csv'}")
    line = check_one_line(res, "clinical.csv: clinical table has no column 'sclever1'")
    assert line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_predict_outputs_follow_umask_and_leftovers_go(
    ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    res = _predict(ckpt, tiny_cohort, out, "heatmaps=true", umask=0o022)
    assert res.rc == 0, res.stderr[-3000:]
    files = [p for p in out.rglob("*") if p.is_file() and "cache" not in p.relative_to(out).parts]
    kinds = {p.relative_to(out).parts[0] for p in files}
    assert {"predictions.csv", "predictions.json", "patients", "slides"} <= kinds
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    # a kill leaves temporaries: the next run into the same out_dir removes them
    slide_dir = next(p for p in (out / "slides").iterdir() if p.is_dir())
    stray = [slide_dir / ".heatmap.x1y2z3.tmp.png", out / ".predictions.q9w8.tmp.csv"]
    for p in stray:
        p.write_bytes(b"partial")
    res = _predict(ckpt, tiny_cohort, out, "heatmaps=true", umask=0o022)
    assert res.rc == 0, res.stderr[-3000:]
    assert not any(p.exists() for p in stray)


@pytest.mark.slow
def test_empty_slides_skipped_are_reported(tiny_cohort: Path, tmp_path: Path) -> None:
    """``data.on_bad_slide=skip``: the three empty slides are skipped, listed in summary.json
    (skipped_slides) with their reason, and counted in the printed summary."""
    import json

    rows = _rows(tiny_cohort)
    header, body = rows[0], rows[1:]
    img, sid = header.index("image"), header.index("slide_id")
    makers = [all_zero_slide, one_pixel_slide, sparse_slide]
    for row, make in zip(body[:3], makers, strict=True):
        row[img] = str(make(tmp_path / f"{row[sid]}.ome.tif"))
    _write(tmp_path / "manifest.csv", [header, *body])
    args = _train(tmp_path / "cache", "data.on_bad_slide=skip", "trainer.enable_progress_bar=false")
    proc = subprocess.run(
        [*command("train"), *args(tmp_path, tiny_cohort)],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped slides: 3" in proc.stdout
    summary = json.loads(next((tmp_path / "runs").rglob("summary.json")).read_text())
    skipped = "\n".join(summary["skipped_slides"])
    for fragment in ("every pixel of every channel is 0", "smaller than one tile", "holds no data"):
        assert fragment in skipped, skipped


@pytest.mark.slow
def test_ctrl_c_during_training(tiny_cohort: Path, tmp_path: Path) -> None:
    """SIGINT mid-epoch: exit 130, one line (Lightning's own notice suppressed); the run
    directory, which holds a checkpoint by then, is renamed ``<dir>.failed``."""
    args = [
        f"data.root={tiny_cohort}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "trainer=cpu",
        "trainer.max_epochs=200",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.Popen(
        [*command("train"), *args],
        cwd=tmp_path,
        env={**_env(tmp_path), "PYTHONWARNINGS": "ignore"},  # Lightning's run-time warnings
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 400
    while not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended or never started"
        time.sleep(0.5)
    time.sleep(1.0)  # into the next epoch
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    res = Result(proc.returncode, out, err, set(), set())
    line = check_one_line(res, "interrupted", rc=130)
    assert "Ctrl-C" in line
    assert "Detected KeyboardInterrupt" not in out + err
    assert not (tmp_path / "run").exists() and (tmp_path / "run.failed").is_dir()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (all_zero_slide, "every pixel of every channel is 0"),
        (one_pixel_slide, "smaller than one tile"),
        (sparse_slide, "holds no data for 99.98% of its image tiles"),
    ],
    ids=["all-zero", "1x1", "sparse-tiff"],
)
def test_empty_slide_is_diagnosed(
    make: Callable[[Path], Path], reason: str, tmp_path: Path
) -> None:
    """Fast tier, in process: the diagnosis the data module and predict run on a 0-tile slide."""
    from immunoplex.errors import SlideReadError
    from immunoplex.tiles.empty import check_not_empty, empty_slide_reason
    from immunoplex.tiles.params import TilingParams

    path = make(tmp_path / "s.ome.tif")
    with pytest.raises(SlideReadError) as info:
        check_not_empty(path, TilingParams())
    assert str(info.value).startswith(f"{path}: empty slide: ") and reason in str(info.value)
    good = _ome(tmp_path / "good.ome.tif", np.full((len(CHANNELS), 256, 256), 9, np.uint16))
    assert empty_slide_reason(good, TilingParams()) is None  # signal but no tissue: not "empty"


def test_case_colliding_channels_name_both_files(tmp_path: Path) -> None:
    from immunoplex.errors import SlideReadError
    from immunoplex.io import open_slide

    folder = colliding_folder(tmp_path / "slide")
    with pytest.raises(SlideReadError) as info:
        open_slide(folder)
    assert f"{folder}: CD8.tif and cd8.tif name the same channel" in str(info.value)


@pytest.mark.parametrize(
    "experiment",
    sorted(
        p.stem
        for p in (Path(__file__).resolve().parents[2] / "configs" / "experiment").glob("*.yaml")
    ),
)
def test_every_shipped_experiment_passes_the_cli_checks(experiment: str) -> None:
    """immunoplex-train validates the composed config before it runs: a shipped experiment (the
    `make train` default among them) must pass it, as the in-process train() calls do."""
    from hydra import compose, initialize_config_dir

    from immunoplex.cli.checks import validate_train
    from immunoplex.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    validate_train(cfg)
