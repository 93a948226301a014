"""The package as a user installs it: the wheel ships the configs and its CLIs run.

The sources the build needs (pyproject.toml, README.md, src/, configs/) are copied to a temporary
directory first, so a build leaves no ``build/`` or egg-info in the checkout. Checked:

- the wheel, and the wheel built from the sdist, contain every file of ``configs/`` under
  ``immunoplex/configs/`` (``src/immunoplex/configs`` is a link to ``configs/``);
- the wheel installed into a fresh venv, run from a directory outside the checkout, imports from
  that venv and runs ``immunoplex-synth size=tiny``, a 1-epoch ``immunoplex-train`` and
  ``immunoplex-predict``;
- an editable install reads the checkout's ``configs/``.

The fresh venvs get the dependencies without installing them: a ``.pth`` file puts the running
interpreter's site-packages on their path. Python does not process ``.pth`` files of a directory
added that way, so the project's editable-install hook (which would put ``src/`` on the path)
stays inactive, and the venv's own site-packages comes first.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "IMMUNOPLEX_CONFIG_DIR", "IMMUNOPLEX_ROOT"}
    }
    env.update(PYTHONNOUSERSITE="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc


def _copy_sources(dest: Path) -> Path:
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("src", "configs"):
        shutil.copytree(REPO / name, dest / name, symlinks=True, ignore=ignore)
    return dest


def _build_wheel(project: Path, out: Path) -> Path:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            out,
            project,
        ],
        cwd=project,
    )
    (wheel,) = out.glob("immunoplex-*.whl")
    return wheel


def _build_sdist(project: Path, out: Path) -> Path:
    """``python -m build --sdist`` when ``build`` is installed, else the PEP 517 hook itself."""
    try:
        import build  # noqa: F401

        _run(
            [sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", out, project],
            cwd=project,
        )
    except ImportError:
        _run(
            [
                sys.executable,
                "-c",
                f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})",
            ],
            cwd=project,
        )
    (sdist,) = out.glob("immunoplex-*.tar.gz")
    return sdist


def _config_files() -> set[str]:
    return {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*") if p.is_file()}


def _wheel_configs(wheel: Path) -> set[str]:
    prefix = "immunoplex/configs/"
    with zipfile.ZipFile(wheel) as zf:
        return {n[len(prefix) :] for n in zf.namelist() if n.startswith(prefix) and n[-1] != "/"}


def _fresh_venv(path: Path) -> Path:
    """A venv without pip whose path also holds this interpreter's site-packages (the deps)."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    python = path / "bin" / "python"
    purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path.parent
    ).stdout.strip()
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(purelib) / "_immunoplex_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    return python


def _pip_into(python: Path, *args: str | Path) -> None:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            *args,
        ],
        cwd=python.parent,
    )


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("packaging")
    assert not root.resolve().is_relative_to(REPO)
    _copy_sources(root / "project")
    return root


@pytest.fixture(scope="module")
def wheel(build_dir: Path) -> Path:
    return _build_wheel(build_dir / "project", build_dir / "wheel")


def test_wheel_ships_every_config(wheel: Path) -> None:
    shipped = _wheel_configs(wheel)
    yamls = {n for n in shipped if n.endswith(".yaml")}
    assert len(yamls) > 30, sorted(shipped)
    assert {"train.yaml", "predict.yaml", "synth.yaml", "eval.yaml", "tile.yaml"} <= shipped
    models = {n for n in yamls if n.startswith("model/")}
    assert {
        "model/multimodal.yaml",
        "model/image_only.yaml",
        "model/expression_only.yaml",
    } <= models
    assert shipped == _config_files(), "every file of configs/ must be in the wheel (package-data)"


def test_sdist_builds_a_wheel_with_the_configs(build_dir: Path) -> None:
    sdist = _build_sdist(build_dir / "project", build_dir / "sdist")
    with tarfile.open(sdist) as tf:
        tf.extractall(build_dir / "sdist", filter="data")
    (unpacked,) = (build_dir / "sdist").glob("immunoplex-*/")
    assert (unpacked / "src" / "immunoplex" / "configs" / "train.yaml").is_file()
    assert _wheel_configs(_build_wheel(unpacked, build_dir / "sdist_wheel")) == _config_files()


def test_installed_wheel_synth_train_predict(wheel: Path, build_dir: Path) -> None:
    venv = build_dir / "venv"
    python = _fresh_venv(venv)
    _pip_into(python, wheel)
    work = build_dir / "work"
    work.mkdir()

    probe = _run(
        [
            python,
            "-c",
            "import sys, immunoplex; from immunoplex.paths import config_dir; "
            "print(immunoplex.__file__); print(config_dir()); print(*sys.path, sep='\\n')",
        ],
        cwd=work,
    ).stdout.splitlines()
    module, configs, path = Path(probe[0]), Path(probe[1]), probe[2:]
    assert module.is_relative_to(venv), module
    assert configs.is_relative_to(venv) and (configs / "train.yaml").is_file(), configs
    assert not any(p and Path(p).resolve().is_relative_to(REPO / "src") for p in path), path

    bin_dir = venv / "bin"
    _run(
        [bin_dir / "immunoplex-synth", "size=tiny", "seed=0", "out_dir=cohort", "workers=1"],
        cwd=work,
    )
    assert (work / "cohort" / "manifest.csv").is_file()

    _run(
        [
            bin_dir / "immunoplex-train",
            "data.root=cohort",
            "data.cache_dir=cohort/cache",
            "trainer=cpu",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "data.num_workers=0",
            "data.prep_workers=1",
            "hydra.run.dir=run",
        ],
        cwd=work,
    )
    ckpt = work / "run" / "model.ckpt"
    assert ckpt.is_file() and (work / "run" / "summary.json").is_file()

    _run(
        [
            bin_dir / "immunoplex-predict",
            f"ckpt={ckpt}",
            "input=cohort/manifest.csv",
            "expression=cohort/expression.csv",
            "out_dir=pred",
            "device=cpu",
            "heatmaps=false",
            "progress=false",
        ],
        cwd=work,
    )
    with open(work / "cohort" / "manifest.csv", newline="") as f:
        patients = {row["patient_id"] for row in csv.DictReader(f)}
    with open(work / "pred" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["patient_id"] for r in rows) == sorted(patients)
    assert all(0.0 <= float(r["calibrated_probability"]) <= 1.0 for r in rows)
    assert (work / "pred" / "predictions.json").is_file()


def test_editable_install_reads_the_checkout_configs(build_dir: Path) -> None:
    project = build_dir / "project"
    python = _fresh_venv(build_dir / "venv_editable")
    _pip_into(python, "--no-build-isolation", "-e", project)
    work = build_dir / "work_editable"
    work.mkdir()
    out = _run(
        [
            python,
            "-c",
            "import immunoplex; from immunoplex.paths import config_dir; "
            "print(immunoplex.__file__); print(config_dir())",
        ],
        cwd=work,
    ).stdout.split()
    assert Path(out[0]).is_relative_to(project / "src"), out
    assert Path(out[1]) == (project / "configs").resolve(), out
