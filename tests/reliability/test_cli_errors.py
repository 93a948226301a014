"""Issue 14.3: every user mistake on the real console scripts is one line and exit 2.

Each case runs a CLI in a subprocess, in its own empty working directory, and checks the whole
contract: exit status 2 (130 for Ctrl-C), exactly one non-empty stderr line, starting with
``error:`` and naming the key or file, no traceback, no Hydra "HYDRA_FULL_ERROR" hint, and no
file written anywhere in the working directory (or in the output directory). The fast cases fail
before any work and run concurrently in threads; the ones that need a trained checkpoint are
marked slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

BIN = Path(sys.executable).parent
UNWRITABLE = "/proc/immunoplex-no-such-dir/out"  # cannot be created, even by root


def command(app: str) -> list[str]:
    script = BIN / f"immunoplex-{app}"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", f"immunoplex.cli.{app}"]


@dataclass(frozen=True)
class Case:
    id: str
    app: str
    args: Callable[[Path, Path], list[str]]  # (work dir, tiny cohort) -> arguments
    fragment: str  # must appear in the error line (key or file)
    setup: Callable[[Path], None] | None = None
    exact: str | None = None


def _file(name: str, text: str = "not what you think\n") -> Callable[[Path], None]:
    def make(work: Path) -> None:
        (work / name).write_text(text)

    return make


def _planted_pickle(work: Path) -> None:
    import torch

    class Planted:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {work / 'PWNED'}",))

    torch.save({"state_dict": {}, "x": Planted()}, work / "planted.ckpt")


def _huge_tiff(work: Path) -> None:
    from tests.reliability.test_fuzz import _patch_dims

    path = work / "huge.tif"
    tifffile.imwrite(path, np.ones((64, 64), np.uint16), tile=(16, 16))
    _patch_dims(path, 65535, 65535)


def _truncated_tiff(work: Path) -> None:
    from tests.reliability.slides import tissue_image, write_ome

    path = write_ome(work / "full.ome.tif", tissue_image(size=256))
    raw = path.read_bytes()
    (work / "trunc.ome.tif").write_bytes(raw[: len(raw) // 2])
    path.unlink()


def _train(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda w, c: [f"data.root={c}", "trainer=cpu", *extra]


def _predict(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda w, c: [
        f"ckpt={w / 'model.ckpt'}",
        f"input={c / 'manifest.csv'}",
        f"out_dir={w / 'out'}",
        "progress=false",
        *extra,
    ]


def _eval(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda w, c: [f"predictions={c / 'truth.csv'}", f"out_dir={w / 'out'}", *extra]


def _synth(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda w, c: [f"out_dir={w / 'out'}", "size=tiny", "progress=false", *extra]


def _tile(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda w, c: [f"manifest={c / 'manifest.csv'}", f"out_dir={w / 'out'}", *extra]


def _out(value: str) -> str:
    return f"out_dir={value}"


FAST = [
    # Hydra's own errors
    Case("train-unknown-key", "train", _train("trainer.max_epoch=1"), "trainer.max_epoch"),
    Case("predict-unknown-key", "predict", _predict("heatmap=false"), "heatmap"),
    Case("train-unknown-choice", "train", _train("model=multimodl"), "model=multimodl"),
    Case("train-malformed-list", "train", _train("data.markers=[DAPI,"), "data.markers"),
    Case("train-override-no-equals", "train", _train("trainer.max_epochs"), "trainer.max_epochs"),
    Case("train-unknown-flag", "train", _train("--no-such-flag"), "--no-such-flag"),
    Case("predict-missing-ckpt", "predict", lambda w, c: [f"out_dir={w}/out"], "ckpt"),
    Case("predict-missing-input", "predict", lambda w, c: ["ckpt=x", f"out_dir={w}/out"], "input"),
    Case("eval-missing-predictions", "eval", lambda w, c: [f"out_dir={w}/out"], "predictions"),
    Case("synth-missing-out-dir", "synth", lambda w, c: ["size=tiny"], "out_dir"),
    Case("tile-missing-manifest", "tile", lambda w, c: [f"out_dir={w}/out"], "manifest"),
    # bad values
    Case("train-max-epochs-abc", "train", _train("trainer.max_epochs=abc"), "trainer.max_epochs"),
    Case("train-bag-size-0", "train", _train("data.bag_size=0"), "data.bag_size"),
    Case(
        "train-batch-size-0",
        "train",
        _train("data.batch_size=0"),
        "data.batch_size",
        exact="error: data.batch_size: must be an integer >= 1, got 0",
    ),
    Case("train-pos-weight-abc", "train", _train("module.pos_weight=abc"), "module.pos_weight"),
    Case(
        "train-checkpoint-min-epoch-negative",
        "train",
        _train("callbacks.model_checkpoint.min_epoch=-1"),
        "min_epoch",
        exact="error: callbacks.model_checkpoint.min_epoch must be an integer >= 0, got -1",
    ),
    Case(
        "train-n-folds-0",
        "train",
        _train("data.split.mode=kfold", "data.split.n_folds=0"),
        "data.split.n_folds",
    ),
    Case(
        "train-n-folds-1",
        "train",
        _train("data.split.mode=kfold", "data.split.n_folds=1"),
        "data.split.n_folds",
    ),
    Case(
        "cv-n-folds-1",
        "cv",
        _train("data.split.mode=kfold", "data.split.n_folds=1"),
        "data.split.n_folds",
    ),
    Case(
        "train-fold-out-of-range",
        "train",
        _train("data.split.mode=kfold", "data.split.fold=5"),
        "data.split.fold",
    ),
    Case("eval-ece-bins-0", "eval", _eval("ece_bins=0"), "ece_bins"),
    Case("eval-n-boot-abc", "eval", _eval("n_boot=abc"), "n_boot"),
    Case("predict-chunk-size-0", "predict", _predict("chunk_size=0"), "chunk_size"),
    Case("synth-seed-abc", "synth", _synth("seed=abc"), "seed"),
    # output directories
    *[
        Case(
            f"{app}-out-dir-is-file",
            app,
            lambda w, c, b=build: [*b(w, c), _out(f"{w}/afile")],
            "afile",
            setup=_file("afile"),
        )
        for app, build in (
            ("synth", _synth()),
            ("tile", _tile()),
            ("predict", _predict()),
            ("eval", _eval()),
        )
    ],
    *[
        Case(
            f"{app}-out-dir-unwritable",
            app,
            lambda w, c, b=build: [*b(w, c), _out(UNWRITABLE)],
            "out",
        )
        for app, build in (
            ("synth", _synth()),
            ("tile", _tile()),
            ("predict", _predict()),
            ("eval", _eval()),
        )
    ],
    Case(
        "train-run-dir-under-a-file",
        "train",
        lambda w, c: [*_train()(w, c), f"hydra.run.dir={w}/afile/run"],
        "hydra.run.dir",
        setup=_file("afile"),
    ),
    # checkpoints given to train
    Case(
        "train-ckpt-path-text-file",
        "train",
        lambda w, c: [*_train()(w, c), f"ckpt_path={w}/notes.ckpt"],
        "notes.ckpt",
        setup=_file("notes.ckpt"),
    ),
    Case(
        "train-ckpt-path-planted-pickle",
        "train",
        lambda w, c: [*_train()(w, c), f"ckpt_path={w}/planted.ckpt"],
        "planted.ckpt",
        setup=_planted_pickle,
    ),
    Case(
        "train-ckpt-path-missing",
        "train",
        lambda w, c: [*_train()(w, c), f"ckpt_path={w}/nope.ckpt"],
        "nope.ckpt",
    ),
    # immunoplex-inspect
    Case(
        "inspect-not-a-tiff", "inspect", lambda w, c: [f"{w}/x.tif"], "x.tif", setup=_file("x.tif")
    ),
    Case("inspect-missing", "inspect", lambda w, c: [f"{w}/missing.tif"], "missing.tif"),
    Case(
        "inspect-huge-header",
        "inspect",
        lambda w, c: [f"{w}/huge.tif"],
        "huge.tif",
        setup=_huge_tiff,
    ),
    Case(
        "inspect-truncated",
        "inspect",
        lambda w, c: [f"{w}/trunc.ome.tif"],
        "trunc.ome.tif",
        setup=_truncated_tiff,
    ),
    Case("inspect-no-args", "inspect", lambda w, c: [], "arguments"),
    Case("inspect-bad-mpp", "inspect", lambda w, c: [f"{w}/x", "--mpp", "-1"], "--mpp"),
]


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    before: set[Path]
    after: set[Path]


def _env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("IMMUNOPLEX_DEBUG", None)
    env["IMMUNOPLEX_ROOT"] = str(work)  # paths.root_dir: runs/ and cache/ land in work
    env["PYTHONWARNINGS"] = "default"  # a warning on stderr would fail the one-line check
    return env


def run_case(case: Case, work: Path, cohort: Path) -> Result:
    work.mkdir(parents=True, exist_ok=True)
    if case.setup is not None:
        case.setup(work)
    before = _files(work)
    proc = subprocess.run(
        [*command(case.app), *case.args(work, cohort)],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr, before, _files(work))


@pytest.fixture(scope="module")
def fast_results(
    request: pytest.FixtureRequest, tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Result]:
    """Run the selected fast cases once, four at a time."""
    wanted = {
        item.callspec.params["case"].id
        for item in request.session.items
        if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)
    }
    cases = [c for c in FAST if c.id in wanted] or FAST
    root = tmp_path_factory.mktemp("cli_errors")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {c.id: pool.submit(run_case, c, root / c.id, tiny_cohort) for c in cases}
        return {k: f.result() for k, f in futures.items()}


def check_one_line(res: Result, fragment: str, rc: int = 2, exact: str | None = None) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    shown = f"rc={res.rc}\nstderr:\n{res.stderr[-3000:]}\nstdout:\n{res.stdout[-1000:]}"
    assert res.rc == rc, shown
    assert len(lines) == 1, shown
    line = lines[0]
    assert line.startswith("error: "), shown
    assert fragment in line, shown
    assert "Traceback" not in res.stderr + res.stdout, shown
    assert "HYDRA_FULL_ERROR" not in res.stderr + res.stdout, shown
    if exact is not None:
        assert line == exact
    new = res.after - res.before
    assert not new, f"files written: {sorted(map(str, new))}\n{shown}"
    return line


@pytest.mark.parametrize("case", FAST, ids=[c.id for c in FAST])
def test_user_mistake_is_one_line(case: Case, fast_results: dict[str, Result]) -> None:
    check_one_line(fast_results[case.id], case.fragment, exact=case.exact)


def test_planted_pickle_ran_nothing(fast_results: dict[str, Result]) -> None:
    res = fast_results.get("train-ckpt-path-planted-pickle")
    if res is None:
        pytest.skip("case not selected")
    assert "PWNED" not in {p.name for p in res.after}
    assert "refused" in res.stderr


def test_inspect_huge_header_hides_tifffile_messages(fast_results: dict[str, Result]) -> None:
    res = fast_results.get("inspect-huge-header")
    if res is None:
        pytest.skip("case not selected")
    assert "tifffile" not in res.stderr and "TiffFile" not in res.stderr


# ---------------------------------------------------------------------------------------------
# cases that need a trained checkpoint


@pytest.fixture(scope="module")
def ckpt(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.predict.conftest import train_checkpoint

    return train_checkpoint(tiny_cohort, tmp_path_factory.mktemp("cli_errors_run"), epochs=1)


@pytest.mark.slow
def test_predict_corrupt_parquet_manifest(ckpt: Path, tmp_path: Path, tiny_cohort: Path) -> None:
    bad = tmp_path / "manifest.parquet"
    bad.write_bytes(b"PAR1" + b"not parquet at all" * 20 + b"PAR1")
    case = Case(
        "predict-corrupt-parquet",
        "predict",
        lambda w, c: [f"ckpt={ckpt}", f"input={bad}", f"out_dir={w}/out", "progress=false"],
        "manifest.parquet",
    )
    check_one_line(run_case(case, tmp_path / "work", tiny_cohort), case.fragment)
    assert not (tmp_path / "work" / "out").exists()


@pytest.mark.slow
def test_predict_sigint_is_one_line_and_130(ckpt: Path, tmp_path: Path, tiny_cohort: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(
        [
            *command("predict"),
            f"ckpt={ckpt}",
            f"input={tiny_cohort / 'manifest.csv'}",
            f"out_dir={work / 'out'}",
            "progress=false",
        ],
        cwd=work,
        env=_env(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the model is loaded and slides are being read
        if "predicting" in line:
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    res = Result(proc.returncode, out, err, set(), set())
    line = check_one_line(res, "interrupted", rc=130)
    assert "Ctrl-C" in line
