#!/usr/bin/env bash
# One prepared check for a GPU machine (issue 19.5): every figure BENCHMARKS.md leaves "not yet
# measured on GPU", written under one output folder. Sized for under 8 minutes on one H100/H200.
#
#   scripts/gpu_check.sh [--device cuda|cpu] [--quick] [--out DIR] [--wheels DIR] [--cache DIR]
#
# --device cpu --quick runs the whole thing on a CPU in its tiny setting (the slow test tier runs
# it: tests/scripts/test_gpu_check.py), so the script is known to work before a GPU is lent.
#
# Bare GPU image (torch present, hydra-core etc. absent): on a machine with pip access, from the
# repository root, fetch the missing wheels once into .whl/ (ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl \
#     hydra-core omegaconf antlr4-python3-runtime lightning lightning-utilities torchmetrics \
#     tifffile imagecodecs scikit-image ...   # `python3 -m pip install --dry-run .` lists the rest
# (one version of each; --python-version = the GPU image's Python). This script installs them
# with `pip install --no-index --no-deps --target` into a private folder and puts it and src/ on
# PYTHONPATH; nothing is installed when the packages import already.
#
# Output (at most 3 files, so a device tool can bring them back): DIR/summary.tsv (step, status,
# seconds, figures), DIR/gpu_check.log (every step's output), DIR/env.txt (machine, versions).
set -uo pipefail

DEVICE=cuda
QUICK=0
OUT=gpu_check_out
WHEELS=.whl
CACHE=${IMMUNOPLEX_BENCH_DIR:-/tmp/immunoplex-bench}
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    -h|--help) sed -n 2,22p "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.tsv
: >"$LOG"
printf 'step\tstatus\tseconds\tfigures\n' >"$SUMMARY"
cd "$REPO" || exit 2
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

# ---- install (bare image) -------------------------------------------------------------------
SITE=${TMPDIR:-/tmp}/immunoplex-site
if ! "$PY" -c "import hydra, lightning, torchmetrics, tifffile" >/dev/null 2>&1; then
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "installing carried wheels from $WHEELS into $SITE" | tee -a "$LOG"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHEELS"/*.whl >>"$LOG" 2>&1 || { echo "wheel install failed" | tee -a "$LOG"; exit 3; }
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "hydra/lightning missing and no wheels in $WHEELS (see the header)" | tee -a "$LOG"
    exit 3
  fi
fi
"$PY" -c "import immunoplex" >/dev/null 2>&1 || export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}

{
  date -u '+date %Y-%m-%d %H:%M:%S UTC'
  echo "device $DEVICE quick $QUICK"
  "$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  echo "nproc $(nproc)  load $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >>"$LOG"

# ---- steps ------------------------------------------------------------------------------------
Q=()
[ "$QUICK" = 1 ] && Q=(--quick)
COMMON=(--device "$DEVICE" --cache "$CACHE" "${Q[@]}")
FAILED=0
step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0 rc part figs
  t0=$SECONDS
  echo "=== $name: $*" | tee -a "$LOG"
  part=$(mktemp)
  timeout "$limit" "$@" >"$part" 2>&1
  rc=$?
  cat "$part" >>"$LOG"
  figs=$(grep -E '^(RATIO|FIGURE|CHECK) ' "$part" | sed -E 's/^(RATIO|FIGURE) //' | tr '\n' ' ')
  rm -f "$part"
  local status=ok
  [ "$rc" = 124 ] && status=timeout
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && status="failed($rc)"
  [ "$status" != ok ] && FAILED=$((FAILED + 1))
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$figs" >>"$SUMMARY"
  echo "--- $name: $status" | tee -a "$LOG"
}

B="$PY scripts"
if [ "$DEVICE" = cpu ]; then
  T=(--threads 1)
  SIZE=()
  TWO=()
else
  T=()
  SIZE=(--size 20000 --reps 2)
  TWO=(--model resnet50 --bag-size 16)
fi
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

step bench2_overhead 300 $B/bench_overhead.py "${COMMON[@]}" "${T[@]}"
step bench3_datastall 240 $B/bench_datastall.py "${COMMON[@]}" "${T[@]}"
step bench3_datastall_workers4 240 $B/bench_datastall.py "${COMMON[@]}" "${T[@]}" --workers 4
step bench4_twostage 420 $B/bench_twostage.py "${COMMON[@]}" "${T[@]}" "${TWO[@]}"
step bench5_resnet 300 $B/bench_resnet.py "${COMMON[@]}" "${T[@]}"
if [ "$DEVICE" != cpu ]; then
  step bench5_resnet_compile 420 $B/bench_resnet.py "${COMMON[@]}" --compile
fi
step bench6_inference 600 $B/bench_inference.py "${COMMON[@]}" "${T[@]}" "${SIZE[@]}"
step train_bf16_vs_fp32 600 $B/gpu_check.py precision "${COMMON[@]}" "${T[@]}" --out "$CACHE/gpu-check-runs"
step sync_debug 300 $B/gpu_check.py syncs "${COMMON[@]}" "${T[@]}" --out "$CACHE/gpu-check-runs"
step ddp_devices1 300 $B/gpu_check.py ddp "${COMMON[@]}" "${T[@]}" --devices 1 --epochs 1 --out "$CACHE/gpu-check-runs"
if [ "$GPUS" -ge 2 ] 2>/dev/null; then
  step ddp_devices2 300 $B/gpu_check.py ddp "${COMMON[@]}" --devices 2 --epochs 1 --out "$CACHE/gpu-check-runs"
fi
step embed_1000_slides 300 $B/gpu_check.py embed "${COMMON[@]}" "${T[@]}" --slides 1000 --out "$CACHE/gpu-check-runs"

echo "summary: $SUMMARY ($FAILED step(s) not ok)" | tee -a "$LOG"
column -t -s $'\t' "$SUMMARY" 2>/dev/null | cut -c1-220 || cat "$SUMMARY"
[ "$FAILED" = 0 ]
