#!/usr/bin/env bash
# One prepared check of bslrun on an NVIDIA GPU machine (CUDA 12), run from anywhere:
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
# 1. installs bslrun with the cuda12 extra into a virtual environment ($VENV, default
#    $TMPDIR/bslrun-venv-gpu; SKIP_INSTALL=1 reuses one), prints nvidia-smi and jax.devices();
# 2. (i) trains the lecture MAF (experiment=lecture_maf_moons) by the fused epoch and by
#    a per-step loop over the same batches from one initial state, and prints both final
#    losses, once at the default matmul precision and once with
#    JAX_DEFAULT_MATMUL_PRECISION=highest: a gap that closes at "highest" is TF32
#    rounding, one that stays is a real difference (an earlier H200 run of maf_epoch gave
#    fused 1.245 vs loop 0.977; on a CPU the two agree exactly, see docs/benchmarks.md);
# 3. (ii) python -m benchmarks.run --only peers --only vae_epoch --only bnn_epoch
#    --only maf_epoch, at their default settings;
# 4. (iii) times `bslrun experiment=lecture_vae_mnist` (10 epochs) on MNIST and prints
#    the wall time and timing.train_examples_per_sec from the run folder's metrics.json.
#
# Everything (a log of this script, the JSON results, the run folder) goes under $OUT,
# or a fresh temporary folder when $OUT is unset. MNIST is looked for under $MNIST_ROOT,
# then $BSLRUN_SHARED_DIR/data, ./shared/data and ../shared/data (IDX files in
# <root>/mnist/); without it step (iii) is skipped and vae_epoch uses random images.
#
# Budget, under 10 minutes on one H200 (each step also has a timeout): install 1-3 min
# (pip; with no network, point pip at wheels with PIP_FIND_LINKS and PIP_NO_INDEX=1, or
# SKIP_INSTALL=1); (i) about 30 s per precision (51 epochs: maf_epoch's schedule, the run
# the H200 figures above came from); (ii) 2-4 min, mostly compilation (their default
# epochs and repetitions were sized for a 2-core CPU, so each timed segment is short on a
# GPU); (iii) about 1 min (10 epochs, as the preset; 10 importance samples per test image).

set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
OUT_DIR="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT_DIR/results"
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1

# outside the work tree by default: nothing for git to see
VENV="${VENV:-${TMPDIR:-/tmp}/bslrun-venv-gpu}"
PY="$VENV/bin/python"
FAILED=()

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

# run NAME TIMEOUT_S COMMAND...: a failing or overrunning step is recorded, the rest go on.
run() {
  local name="$1" limit="$2"
  shift 2
  if ! timeout "$limit" "$@"; then
    echo "!! $name failed or ran past ${limit} s"
    FAILED+=("$name")
  fi
}

find_mnist() {
  local root
  for root in "${MNIST_ROOT:-}" "${BSLRUN_SHARED_DIR:+$BSLRUN_SHARED_DIR/data}" \
    "$PWD/shared/data" "$PWD/../shared/data"; do
    if [ -n "$root" ] && [ -f "$root/mnist/train-images-idx3-ubyte.gz" ]; then
      (cd "$root" && pwd)
      return 0
    fi
  done
  return 1
}

step "install bslrun[cuda12] into $VENV"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  python3 -m venv "$VENV" || exit 1
  "$PY" -m pip install --quiet --upgrade pip || exit 1
  "$PY" -m pip install --quiet -e '.[cuda12]' || exit 1
fi
"$PY" -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda12-plugin|jax-cuda12-pjrt|flax|numpyro|optax) '

step "devices"
nvidia-smi || echo "!! nvidia-smi failed"
"$PY" -c 'import jax; print("jax", jax.__version__, jax.default_backend(), jax.devices())'
if [ "$("$PY" -c 'import jax; print(jax.default_backend())')" != gpu ] && [ "${ALLOW_CPU:-0}" != 1 ]; then
  echo "!! JAX sees no GPU: stopping (ALLOW_CPU=1 runs the checks anyway)"
  exit 1
fi

DATA_ROOT="$(find_mnist || true)"
if [ -n "$DATA_ROOT" ]; then
  # vae_epoch reads MNIST from $BSLRUN_SHARED_DIR/data
  BSLRUN_SHARED_DIR="$(dirname "$DATA_ROOT")"
  export BSLRUN_SHARED_DIR
  echo "MNIST: $DATA_ROOT/mnist"
else
  echo "MNIST not found: step (iii) will be skipped, vae_epoch will use random images"
fi

step "(i) lecture MAF, fused epoch vs per-step loop, default matmul precision"
run fused_vs_loop_default 180 env -u JAX_DEFAULT_MATMUL_PRECISION \
  "$PY" -m benchmarks.fused_vs_loop --out "$OUT_DIR/fused_vs_loop_default.json"

step "(i) the same with JAX_DEFAULT_MATMUL_PRECISION=highest (no TF32)"
run fused_vs_loop_highest 180 env JAX_DEFAULT_MATMUL_PRECISION=highest \
  "$PY" -m benchmarks.fused_vs_loop --out "$OUT_DIR/fused_vs_loop_highest.json"

step "(ii) benchmarks: peers, vae_epoch, bnn_epoch, maf_epoch"
# Written to benchmarks/results/ first (git-ignored), so that peers compares itself with
# an earlier peers.json there ("previous"), if this machine has one; then copied to $OUT.
run benchmarks 420 "$PY" -m benchmarks.run --only peers --only vae_epoch --only bnn_epoch \
  --only maf_epoch
for name in peers vae_epoch bnn_epoch maf_epoch; do
  cp "benchmarks/results/$name.json" "$OUT_DIR/results/" 2>/dev/null || true
done

step "(iii) bslrun experiment=lecture_vae_mnist, 10 epochs"
if [ -n "$DATA_ROOT" ]; then
  export BSLRUN_OUTPUT_DIR="$OUT_DIR/experiments"
  start=$(date +%s.%N)
  run lecture_vae_mnist 300 "$VENV/bin/bslrun" experiment=lecture_vae_mnist \
    data.root="$DATA_ROOT" data.download=false trainer.epochs=10 trainer.progress=false
  end=$(date +%s.%N)
  # run folders are named by start time, so the last in sort order is this run's
  run_dir="$(find "$BSLRUN_OUTPUT_DIR/lecture_vae_mnist" -mindepth 1 -maxdepth 1 -type d \
    2>/dev/null | sort | tail -n 1)"
  awk -v a="$start" -v b="$end" 'BEGIN { printf "wall time (whole command): %.1f s\n", b - a }'
  if [ -n "$run_dir" ] && [ -f "$run_dir/metrics.json" ]; then
    "$PY" - "$run_dir/metrics.json" <<'PYTHON'
import json
import sys

timing = json.load(open(sys.argv[1]))["timing"]
for key in ("startup_s", "compile_s", "train_s", "eval_s", "train_examples_per_sec"):
    print(f"timing.{key}: {timing.get(key)}")
PYTHON
  else
    echo "!! no metrics.json under $BSLRUN_OUTPUT_DIR/lecture_vae_mnist"
    FAILED+=("lecture_vae_mnist metrics")
  fi
else
  echo "skipped: MNIST not found (set MNIST_ROOT to the folder holding mnist/)"
fi

step "done: outputs in $OUT_DIR"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "failed: ${FAILED[*]}"
  exit 1
fi
echo "every step ran"
