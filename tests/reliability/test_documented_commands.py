"""Issue 14.4: every command shown in README.md and docs/*.md runs.

The shell commands are extracted from the fenced code blocks (``immunoplex-*``, ``make``,
``python``/``sbatch`` lines, with their ``\\`` continuation lines; a ``for`` loop is expanded).
Each one must have an entry in :data:`PLANS`: a command without one fails
:func:`test_every_documented_command_has_a_plan`, so a new README command needs a case here.
Runnable commands get their placeholders replaced (``data/synthetic``, ``<run>``, ``RUN``,
``cohort/``... -> the tiny cohort and a tiny trained run), fast overrides appended
(``trainer=cpu trainer.max_epochs=1``, small folds/boots) and run as real console scripts, a few
at a time; the others are skipped with the stated reason (GPU, SLURM, ../shared/realdata,
minutes-long set-up).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REALDATA, REPO_ROOT
from tests.reliability.test_cli_errors import _env, command

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^(immunoplex-[a-z]+|make|\.venv/bin/python|python|sbatch)\b")


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).strip()


def documented_commands() -> list[tuple[str, str]]:
    """(file name, command) for every command line in a fenced block, in order."""
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        for block in re.findall(r"^```[^\n]*\n(.*?)^```", doc.read_text(), flags=re.S | re.M):
            lines = block.splitlines()
            i = 0
            while i < len(lines):
                cmd = lines[i]
                while cmd.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    cmd = cmd.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
                cmd = " ".join(_strip_comment(cmd).split())
                loop = re.match(r"for (\w+) in ([^;]+); do$", cmd)
                if loop and i < len(lines):  # `for m in a b c; do <cmd with $m> done`
                    body = " ".join(_strip_comment(lines[i]).split())
                    found.append((doc.name, f"{cmd} {body}"))
                    i += 1
                    continue
                if COMMAND.match(cmd):
                    found.append((doc.name, cmd))
    return found


@dataclass(frozen=True)
class Plan:
    skip: str | None = None  # the reason it is not run here
    extra: tuple[str, ...] = ()  # overrides appended
    subs: tuple[tuple[str, str], ...] = ()  # command-specific text substitutions
    needs: str | None = None  # "realdata" or "gpu": run only when available
    expect: dict[str, str] = field(default_factory=dict)


GPU = "needs a CUDA GPU"
SLURM = "needs a SLURM cluster (sbatch/srun, submitit)"
MINUTES = "sets up .venv and runs for minutes (CI runs it: .ci/run, tests/packaging/test_wheel.py)"
ICB = "needs ../shared/realdata/expression and runs for minutes (tests/scripts cover the scripts)"
ICB_MODEL = "needs the model scripts/loco_*.py writes from ../shared/realdata (data/icb/*.json)"

PLANS: dict[str, Plan] = {
    # README: quick start
    "make train": Plan(skip=MINUTES),
    "make test": Plan(skip=MINUTES),
    "immunoplex-synth out_dir=data/synthetic size=default seed=0": Plan(),
    # README: commands
    "immunoplex-inspect ../shared/realdata/images/vectra_qptiff/small_vectra.qptiff --json": Plan(
        needs="realdata"
    ),
    "immunoplex-synth out_dir=data/tiny size=tiny seed=1": Plan(),
    "immunoplex-train data.root=data/tiny trainer.max_epochs=5 model=panel_agnostic": Plan(),
    "immunoplex-predict ckpt=runs/train/<run>/model.ckpt input=data/synthetic/manifest.csv "
    "expression=data/synthetic/expression.csv out_dir=out/predict": Plan(),
    "immunoplex-eval predictions=runs/train/<run>/predictions_test.csv out_dir=out/eval "
    "group_by=[cohort,treatment]": Plan(),
    # README: data formats
    "immunoplex-train data=manifest data.manifest=/cohort/manifest.csv "
    "data.expression=/cohort/expression.csv panel.markers=[DAPI,PanCK,CD8,CD68,STAB1] "
    "data.clinical_columns=[sclever1] tiling.mpp=2.0": Plan(),
    # README: training
    "immunoplex-train model=image_only": Plan(),
    "immunoplex-train model/encoder=resnet18 model/fusion=bilinear": Plan(),
    "immunoplex-train tiling.mpp=1.0 tiling.min_tissue=0.3 expression_norm=rank": Plan(),
    "immunoplex-train experiment=two_stage data.embeddings.encoder_checkpoint=RUN/model.ckpt": Plan(),
    "immunoplex-train ckpt_path=runs/train/<run>/checkpoints/last.ckpt": Plan(
        subs=(("trainer.max_epochs=1", "trainer.max_epochs=2"),)
    ),
    "make cells": Plan(skip="the cell stage over the default cohort: ~18 min on 2 cores"),
    "immunoplex-train experiment=cell_table data.root=data/synthetic": Plan(
        skip="reads the default cohort's cell table (make cells); "
        "tests/predict/test_cell_table_predict.py trains it on the tiny cohort's"
    ),
    "immunoplex-train experiment=cell_features data.split.crossfit_folds=5": Plan(
        subs=(("crossfit_folds=5", "crossfit_folds=2"),)
    ),
    "immunoplex-cv data.split.mode=kfold data.split.n_folds=5": Plan(
        subs=(("n_folds=5", "n_folds=2"),)
    ),
    "immunoplex-cv data.split.mode=loco": Plan(),
    # README: GPU, multi-GPU and SLURM
    "immunoplex-train trainer=gpu": Plan(needs="gpu"),
    "immunoplex-train trainer=gpu module.channels_last=true module.compile=true": Plan(needs="gpu"),
    "immunoplex-train trainer=ddp trainer.devices=4": Plan(skip="needs 4 GPUs"),
    "sbatch scripts/sbatch_train.sh": Plan(skip=SLURM),
    "immunoplex-train -m hydra/launcher=submitit_slurm hparams_search=lr_bag": Plan(skip=SLURM),
    "immunoplex-cv data.split.mode=kfold": Plan(extra=("data.split.n_folds=2",)),
    # README: real ICB cohorts
    ".venv/bin/python scripts/prepare_icb.py --realdata ../shared/realdata --out data/icb": Plan(
        skip=ICB
    ),
    ".venv/bin/python scripts/loco_icb.py --realdata ../shared/realdata "
    "--out docs/expression_baselines.md": Plan(skip=ICB),
    "immunoplex-predict ckpt=data/icb/expression_elasticnet.json input=null "
    "expression=new_cohort_expression.csv out_dir=out/icb": Plan(skip=ICB_MODEL),
    # docs/cells.md
    "immunoplex-cells manifest=cohort/manifest.csv out_dir=cohort/cells [workers=2]": Plan(),
    "immunoplex-cells slide=E34_imc.tiff out_dir=out mpp=1.0 "
    "'channels=[H3,CD99,PIN,CD8a,CDH]' '+panel.aliases.ECadherin=[CDH]'": Plan(
        needs="realdata",
        subs=(("slide=E34_imc.tiff", "slide={realdata}/images/imc_cytomapper/E34_imc.tiff"),),
    ),
    # docs/evaluation.md
    "immunoplex-eval predictions=runs/mm/predictions.csv out_dir=runs/mm/eval": Plan(),
    "immunoplex-eval predictions=runs/mm/predictions.csv compare=runs/expr/predictions.csv "
    "name=multimodal compare_name=expression-only out_dir=runs/mm/eval_vs_expr": Plan(),
    "immunoplex-eval predictions=P.csv out_dir=D threshold=0.4 group_by=[cohort,treatment,site] "
    "n_boot=2000 seed=0 ci_level=0.95 ece_bins=15 prob_column=probability intersect=true": Plan(
        subs=(("n_boot=2000", "n_boot=50"),)
    ),
    # docs/expression_results.md
    ".venv/bin/python scripts/loco_features.py --realdata ../shared/realdata "
    "--out docs/expression_results.md --model-out data/icb/expression_transfer.json": Plan(
        skip=ICB
    ),
    "immunoplex-predict ckpt=data/icb/expression_transfer.json input=null "
    "expression_file=new_cohort.csv out_dir=out/": Plan(skip=ICB_MODEL),
    # docs/cells.md: scoring segmentation against the synthetic cell truth
    "immunoplex-synth size=default seed=0 out_dir=data/synthetic": Plan(),
    ".venv/bin/python scripts/score_cells.py --cohort data/synthetic --out /tmp/cells_dev "
    "--every 4 --offset 1": Plan(
        skip="scores a default-size cohort's cells against the truth (minutes)"
    ),
    ".venv/bin/python scripts/score_cells.py --cohort data/synthetic --out /tmp/cells_e4 "
    "--every 4": Plan(skip="scores a default-size cohort's cells against the truth (minutes)"),
    ".venv/bin/python scripts/score_cells.py --cohort data/synthetic --out /tmp/h15_spill "
    "--every 1 --workers 2": Plan(
        skip="the cell stage over all 460 slides of the default cohort (~13 min on 2 cores)"
    ),
    ".venv/bin/python scripts/score_cells.py --cohort data/synthetic --out /tmp/h15_e4 "
    "--every 4": Plan(skip="scores a default-size cohort's cells against the truth (minutes)"),
    # docs/models.md: the benchmark runs on an independent, larger draw
    "immunoplex-synth size=default seed=7 n_patients=1000 out_dir=/tmp/ext/cohort": Plan(
        skip="a 1,000-patient draw: ~11 min and ~11 GB"
    ),
    "immunoplex-cells manifest=/tmp/ext/cohort/manifest.csv "
    "out_dir=/tmp/ext/cohort/cell_stage workers=2 'outputs=[h5ad]'": Plan(
        skip="the cell stage over 1,150 slides (~30 min on 2 cores)"
    ),
    ".venv/bin/python scripts/bench_external.py --cohort /tmp/ext/cohort --runs <bench runs> "
    "--models cell_table cell_table_crossfit": Plan(
        skip="reads the benchmark's trained runs and the 1,000-patient draw; "
        "tests/scripts/test_bench_external.py covers its scoring"
    ),
    # docs/models.md: what limits the feature model
    ".venv/bin/python scripts/feature_ceiling.py --run <bench runs>/cell_features/seed0": Plan(
        skip="reads a finished experiment=cell_features run on the default cohort (minutes)"
    ),
    # docs/expression_survival.md
    ".venv/bin/python scripts/loco_survival.py --realdata ../shared/realdata "
    "--out docs/expression_survival.md": Plan(skip=ICB),
    # docs/inference.md
    "immunoplex-predict ckpt=runs/train/<run>/model.ckpt input=new/slide.ome.tif "
    "out_dir=out/pred": Plan(),
    "immunoplex-predict ckpt=model.ckpt input=cohort/manifest.csv "
    "expression=cohort/expression.csv out_dir=out/pred explain=true": Plan(),
    "immunoplex-predict ckpt=model.ckpt input=crops/ mpp=0.5 out_dir=out/crops "
    "markers_for_composite=[DAPI,PanCK,CD8]": Plan(),
    # docs/models.md
    "immunoplex-train model=bilinear model/aggregator=transformer": Plan(),
    "immunoplex-train model=panel_agnostic model.encoder.channel_dropout=0.3": Plan(),
    "immunoplex-train model=resnet18 model.encoder.pretrained_path=/weights/resnet18-f37072fd.pth": (
        Plan()
    ),
    # docs/synthetic_cohort.md
    "immunoplex-synth out_dir=/tmp/tiny size=tiny seed=1 workers=1": Plan(),
    "immunoplex-synth out_dir=x size=small n_patients=100 "
    "truth.effects.image_only.cd8_intratumoural=2": Plan(
        subs=(("n_patients=100", "n_patients=8"),)
    ),
}
# model/encoder=resnet18 appears in README and docs/models.md: one plan covers both.


def test_every_documented_command_has_a_plan() -> None:
    missing = sorted({c for _, c in documented_commands() if c not in PLANS})
    assert not missing, "documented commands without a plan in PLANS:\n" + "\n".join(missing)
    stale = sorted(set(PLANS) - {c for _, c in documented_commands()})
    assert not stale, "plans for commands no longer documented:\n" + "\n".join(stale)


# ---------------------------------------------------------------------------------- running
@dataclass
class Ctx:
    cohort: Path
    run: Path  # a trained run directory (model.ckpt, predictions_test.csv, checkpoints/last.ckpt)
    work: Path
    cache: Path
    weights: Path


def _resnet18_weights(path: Path) -> Path:
    import torch
    import torchvision

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def expand(cmd: str, plan: Plan, ctx: Ctx, n: int) -> list[list[str]]:
    """The argv list(s) that run ``cmd`` on the tiny cohort (a for loop gives several)."""
    loop = re.match(r"for (\w+) in ([^;]+); do (.*)$", cmd)
    if loop:
        var, values, body = loop.groups()
        out: list[list[str]] = []
        for k, v in enumerate(values.split()):
            out += expand(body.replace(f"${var}", v), plan, ctx, n * 10 + k)
        return out
    text = cmd
    for a, b in plan.subs:
        text = text.replace(a, b)
    out_dir = ctx.work / f"out{n}"
    pred_csv = ctx.run / "predictions_test.csv"
    for a, b in (
        ("{realdata}", str(REALDATA)),
        ("../shared/realdata", str(REALDATA)),
        ("runs/train/<run>", str(ctx.run)),
        ("RUN/", f"{ctx.run}/"),
        ("ckpt=model.ckpt", f"ckpt={ctx.run / 'model.ckpt'}"),
        ("runs/mm/predictions.csv", str(pred_csv)),
        ("runs/expr/predictions.csv", str(pred_csv)),
        ("predictions=P.csv", f"predictions={pred_csv}"),
        ("input=new/slide.ome.tif", f"input={ctx.cohort / 'slides' / 'S0001.ome.tif'}"),
        ("input=crops/", f"input={ctx.cohort / 'slides'}"),
        ("/cohort/", f"{ctx.cohort}/"),
        ("=data/synthetic/", f"={ctx.cohort}/"),  # predict's input/expression
        ("=cohort/manifest.csv", f"={ctx.cohort / 'manifest.csv'}"),
        ("=cohort/expression.csv", f"={ctx.cohort / 'expression.csv'}"),
        ("/weights/resnet18-f37072fd.pth", str(ctx.weights)),
    ):
        text = text.replace(a, b)
    argv = [t[1:-1] if t.startswith("[") and t.endswith("]") and "=" in t else t
            for t in shlex.split(text)]  # fmt: skip
    app = argv[0].removeprefix("immunoplex-")
    args = argv[1:]

    def put(key: str, value: str) -> None:
        nonlocal args
        args = [a for a in args if not a.startswith(f"{key}=")] + [f"{key}={value}"]

    if app == "synth":
        put("out_dir", str(out_dir))
        args = [re.sub(r"^size=(default|small|large)$", "size=tiny", a) for a in args]
        put("progress", "false")
    elif app in ("train", "cv"):
        root = next((a for a in args if a.startswith("data.root=")), None)
        if root is None or "data/" in root:
            put("data.root", str(ctx.cohort))
        if not any(a.startswith("trainer=") for a in args):
            put("trainer", "cpu")
        if not any(a.startswith("trainer.max_epochs=") for a in args) or "max_epochs=5" in text:
            put("trainer.max_epochs", "1")
        put("trainer.enable_progress_bar", "false")
        put("data.cache_dir", str(ctx.cache))
        put("hydra.run.dir", str(ctx.work / f"run{n}"))
    elif app in ("predict", "eval", "cells"):
        put("out_dir", str(out_dir))
        if app == "predict":
            put("progress", "false")
    args += list(plan.extra)
    return [[*command(app), *args]]


def _run(argv: list[str], ctx: Ctx) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=ctx.work,
        env=_env(ctx.work),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def ctx(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Ctx:
    from tests.predict.conftest import train_checkpoint

    run = tmp_path_factory.mktemp("documented_run")
    train_checkpoint(tiny_cohort, run, epochs=1)
    work = tmp_path_factory.mktemp("documented")
    return Ctx(tiny_cohort, run, work, work / "cache", _resnet18_weights(work / "w" / "r18.pth"))


def _available(plan: Plan) -> str | None:
    if plan.skip:
        return plan.skip
    if plan.needs == "realdata" and not REALDATA.is_dir():
        return f"needs ../shared/realdata (not found at {REALDATA})"
    if plan.needs == "gpu":
        import torch

        if not torch.cuda.is_available():
            return GPU
    return None


@pytest.mark.slow
def test_documented_commands_run(ctx: Ctx) -> None:
    """Run every runnable documented command (three at a time); all must exit 0."""
    runs: list[tuple[str, list[str]]] = []
    skipped: list[str] = []
    for n, cmd in enumerate(dict.fromkeys(c for _, c in documented_commands())):
        plan = PLANS.get(cmd, Plan(skip="no plan (test_every_documented_command_has_a_plan fails)"))
        reason = _available(plan)
        if reason:
            skipped.append(f"{cmd}: {reason}")
            continue
        runs += [(cmd, argv) for argv in expand(cmd, plan, ctx, n)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda r: (r[0], r[1], _run(r[1], ctx)), runs))
    failed = [
        f"{cmd}\n  ran: {shlex.join(argv)}\n  rc={p.returncode}\n  {p.stderr.strip()[-1500:]}"
        for cmd, argv, p in results
        if p.returncode != 0
    ]
    print(f"ran {len(results)} command(s); skipped {len(skipped)}:\n  " + "\n  ".join(skipped))
    assert not failed, "\n\n".join(failed)
    assert len(results) >= 25


if __name__ == "__main__":  # pragma: no cover
    for doc, cmd in documented_commands():
        print(f"{doc}: {cmd}  [{'planned' if cmd in PLANS else 'NO PLAN'}]")
    sys.exit(0 if os.environ.get("CI") is None else 0)
