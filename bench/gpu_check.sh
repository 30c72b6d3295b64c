#!/usr/bin/env bash
# GPU check: one prepared script, under 10 minutes on one GPU including its setup. It installs
# nothing from the network: hydra-core/omegaconf/antlr4 come from wheels in .whl/ (only where the
# machine's python lacks them), CIFAR-10 is rebuilt from the JPEG archive. Then it trains the
# 2-layer pre-norm ViT with AdamW for 10 epochs on the 45k/5k split
#   (a) fast:    model.attention=sdpa trainer.precision=bf16-mixed data.device_augment=true
#   (b) plain:   the study's settings (explicit attention, fp32, per-image augmentation in workers)
#   (c) compile: (a) + model.compile=true          (last; skipped if the time is short)
# and runs the paired benchmarks of bench/ on the GPU. Results: $OUT/summary.md (table beside
# the study's 392.75 s, 61.73 %, 1294 MB), $OUT/results.jsonl, one log per step.
#
# Prepare once where the network is (copies the archive + tool into .gpu/, wheels into .whl/):
#   make gpu-prep
# Run on the GPU machine (the device tool), from the repo root:
#   bash bench/gpu_check.sh            with carry: [".whl", ".gpu"], timeout_s 600
# Dry run of the very same steps on CPU, tiny limits (checks the script, not the speed):
#   SMOKE=1 PYTHON=.venv/bin/python bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS
SMOKE=${SMOKE:-0}
PY=${PYTHON:-python3}
WORK=${GPU_CHECK_DIR:-${TMPDIR:-/tmp}/lmvit-gpu-check}
OUT=${OUT:-$WORK/out}
SCALE=$([ "$SMOKE" = 1 ] && echo 6 || echo 1)   # a loaded CPU is far slower: longer limits
BUDGET=${BUDGET_S:-$((570 * SCALE))}    # stop starting new steps after this many seconds
mkdir -p "$WORK" "$OUT"
SUMMARY=$OUT/summary.md
RESULTS=$OUT/results.jsonl
: >"$SUMMARY"
: >"$RESULTS"
export PYTHONUNBUFFERED=1 LMVIT_LOG_DIR=$WORK/logs
say() { echo "== [$((SECONDS - START)) s] $*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - (SECONDS - START))); }

# -- 1. packages -------------------------------------------------------------------------------
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  if ! ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
    say "hydra-core/omegaconf are missing and .whl/ holds no wheels: run 'make gpu-prep' and carry .whl"
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "$ROOT"/.whl/*.whl || { say "installing the carried wheels failed"; exit 2; }
  export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import platform, torch, pytorch_lightning, hydra, omegaconf, torchvision, torchmetrics
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)"
print(f"machine: {platform.node()} {platform.machine()}, GPU: {gpu}")
print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"pytorch_lightning {pytorch_lightning.__version__}, torchmetrics {torchmetrics.__version__}, "
      f"hydra {hydra.__version__}, omegaconf {omegaconf.__version__}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$SUMMARY"

# -- 2. data: CIFAR-10 rebuilt from the JPEG archive ------------------------------------------------
first() { for f in "$@"; do [ -f "$f" ] && { echo "$f"; return; }; done; }
ARCHIVE=$(first "$ROOT/.gpu/cifar10-jpeg.tar.gz" "$ROOT/../shared/data/cifar10-jpeg.tar.gz")
TOOL=$(first "$ROOT/.gpu/cifar10_jpeg_to_batches.py" "$ROOT/../shared/tools/cifar10_jpeg_to_batches.py")
export DATA_DIR=$WORK/data
if [ ! -f "$DATA_DIR/cifar-10-batches-py/test_batch" ]; then
  if [ -z "$ARCHIVE" ] || [ -z "$TOOL" ]; then
    say "no cifar10-jpeg.tar.gz / cifar10_jpeg_to_batches.py in .gpu/ or ../shared: run 'make gpu-prep' and carry .gpu"
    exit 2
  fi
  say "rebuilding CIFAR-10 from $ARCHIVE"
  "$PY" "$TOOL" "$ARCHIVE" "$DATA_DIR" || { say "rebuilding CIFAR-10 failed"; exit 2; }
fi
say "data ready in $DATA_DIR"

# -- 3. training runs ----------------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
  LIMITS=(trainer.accelerator=cpu trainer.max_epochs=1 trainer.limit_train_batches=2
          trainer.limit_val_batches=2 data.num_workers=0)
  COMPILE=model.compile=aot_eager   # inductor needs minutes of C++ builds on a CPU
  BENCH=(--repeats 1 --warmup 0)
else
  LIMITS=(trainer.accelerator=gpu trainer.max_epochs=10)
  COMPILE=model.compile=true
  BENCH=()
fi
STUDY=(model=vit optimizer=adamw model.num_layers=2 model.norm=pre test=false callbacks.progress_bar=null)
# the finite-loss guard checks every 50 steps instead of every step (one device sync each)
FAST=(model.attention=sdpa trainer.precision=bf16-mixed data.device_augment=true
      callbacks.finite_loss.check_every_n_steps=50)
RUNS=()
train() {  # name, seconds it may take, overrides...
  local name=$1 limit=$(($2 * SCALE)); shift 2
  if [ "$(left)" -lt 30 ]; then say "skipped $name: too little time left"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  say "train $name: $*"
  timeout "$limit" "$PY" train.py "${STUDY[@]}" "${LIMITS[@]}" "$@" \
    hydra.run.dir="$WORK/logs/$name" >"$OUT/$name.log" 2>&1
  say "train $name exited $?"
  RUNS+=("$name=$WORK/logs/$name")
}
train fast 150 "${FAST[@]}"
train plain 240
train compile 150 "${FAST[@]}" "$COMPILE"
"$PY" bench/gpu_summary.py "${RUNS[@]}" --out "$RESULTS" | tee -a "$SUMMARY"

# -- 4. paired benchmarks on this device ------------------------------------------------------------
bench() {  # seconds, script, args...
  local limit=$(($1 * SCALE)); shift
  if [ "$(left)" -lt 20 ]; then say "skipped $1: too little time left"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  say "bench $*"
  timeout "$limit" "$PY" "$@" "${BENCH[@]}" --out "$RESULTS" >>"$OUT/bench.log" 2>&1
  say "bench $1 exited $?"
}
DEV=$([ "$SMOKE" = 1 ] && echo cpu || echo cuda)
S() { if [ "$SMOKE" = 1 ]; then echo "$1"; else echo "$2"; fi; }  # smoke value | GPU value
bench 40 bench/attention.py --device "$DEV" --iters "$(S 1 20)"
bench 40 bench/vit_vs_timm.py --device "$DEV" --iters "$(S 1 20)"
bench 60 bench/trainer_overhead.py --device "$DEV" --repeats "$(S 1 30)" --warmup "$(S 0 5)"
bench 60 bench/data_throughput.py --device "$DEV" --batches "$(S 2 20)" --steps "$(S 1 20)"
# shellcheck disable=SC2046
bench 90 bench/memory.py --device "$DEV" --batches "$(S 1 5)" --only $(S 2 "2 6")

"$PY" - "$RESULTS" <<'EOF' | tee -a "$SUMMARY"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "ratio" in r:
        print(f"{r['bench']}: ratio {r['ratio']} paired {r['paired_ratio']} target {r.get('target')} "
              f"pass {r.get('pass')} medians {r['median']} {r['unit']}")
    elif r["bench"] == "memory_per_config":
        for k, v in r["configs"].items():
            print(f"memory config {k}: GPU {v['peak_gpu_mb']} MB (study {v['study_gpu_mb']}), RSS {v['peak_rss_mb']} MB")
EOF
say "done in $((SECONDS - START)) s; results in $OUT"
