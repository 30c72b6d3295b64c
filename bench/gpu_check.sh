#!/usr/bin/env bash
# GPU check: one prepared script, under 10 minutes on one GPU including its setup. It installs
# nothing from the network: hydra-core/omegaconf/antlr4/hydra-joblib-launcher/joblib come from
# wheels in .whl/ (only where the machine's python lacks them), CIFAR-10 is rebuilt from the JPEG
# archive, WikiText-2 and the GPT-2 files come from .gpu/. Then, most important first (a step is
# skipped when the time budget runs short):
#   (a) table2: Table 2 x seeds 1, 2, 3 at full scale (10 epochs, 45k images), side by side on the one GPU
#       (hydra/launcher=joblib), fast settings (model.attention=sdpa trainer.precision=bf16-mixed
#       data.device_augment=true, divergence check every 50 steps): the study's table with seeds
#   (b) table1: Table 1 x seeds 1, 2, 3 on the offline split (data=wikitext2_offline), 10 epochs, side by side
#   (c) plain: the study's plain settings (config 2: explicit attention, fp32, per-image augmentation in
#       loader workers) alone on the GPU: its train time beside the study's 392.75 s
#   (d) overhead: the Trainer/plain ratio of the 2-layer ViT, and our per-step overhead vs bare Lightning (--tiny)
#   (e) compile: config 2 alone for 3 epochs: uncompiled, model.compile=true, + model.compile_mode=reduce-overhead
#   and bench: the other paired benchmarks of bench/ (start-up included). STEPS picks some of them, in this
#   order (default: all): STEPS='table1 compile bench' bash bench/gpu_check.sh skips (a), (c) and (d).
#   Results: $OUT/summary.md (epoch times beside the study's 392.75 s, 61.73 %, 1294 MB; table wall
#   times), $OUT/results.jsonl,
#   $OUT/runs.tar.gz (every run directory without checkpoints or event files: metrics.json,
#   config.yaml, dynamics.jsonl, train.log; what `python -m analysis` reads) and $OUT/logs.tar.gz
#   (one log per step).
#
# Prepare once where the network is (copies the archive + tool into .gpu/, wheels into .whl/):
#   make gpu-prep
# Run on the GPU machine, from the repo root:
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
STEPLOGS=$WORK/steplogs   # one log per step, packed into $OUT/logs.tar.gz (few files come back)
SCALE=$([ "$SMOKE" = 1 ] && echo 6 || echo 1)   # a loaded CPU is far slower: longer limits
BUDGET=${BUDGET_S:-$((570 * SCALE))}    # stop starting new steps after this many seconds
ALL_STEPS="table2 table1 plain overhead compile bench"   # (a)-(e) and the benchmarks, in their order
STEPS=" ${STEPS:-$ALL_STEPS} "
for step in $STEPS; do
  [[ " $ALL_STEPS " == *" $step "* ]] || { echo "STEPS: unknown step '$step'; the steps are: $ALL_STEPS" >&2; exit 2; }
done
want() { [[ "$STEPS" == *" $1 "* ]]; }
mkdir -p "$WORK" "$OUT" "$STEPLOGS"
SUMMARY=$OUT/summary.md
RESULTS=$OUT/results.jsonl
: >"$SUMMARY"
: >"$RESULTS"
export PYTHONUNBUFFERED=1 LMVIT_LOG_DIR=$WORK/logs
say() { echo "== [$((SECONDS - START)) s] $*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - (SECONDS - START))); }

# -- 1. packages -------------------------------------------------------------------------------
if ! "$PY" -c "import hydra, omegaconf, joblib, hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
  if ! ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
    say "hydra-core/omegaconf/joblib launcher are missing and .whl/ holds no wheels: run 'make gpu-prep' and carry .whl"
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
for d in wikitext-2 gpt2-tokenizer; do   # Table 1's text and the GPT-2 files (small)
  for src in "$ROOT/.gpu/$d" "$ROOT/../shared/data/$d"; do
    [ ! -d "$DATA_DIR/$d" ] && [ -d "$src" ] && cp -r "$src" "$DATA_DIR/$d"
  done
done
say "data ready in $DATA_DIR: $(ls "$DATA_DIR" | tr '\n' ' ')"

# -- 3. training runs ----------------------------------------------------------------------------
# The steps (a)-(e) and the benchmarks of the header, in that order (STEPS names them).
if [ "$SMOKE" = 1 ]; then
  EPOCHS=1 SHORT=1
  LIMITS=(trainer.accelerator=cpu trainer.limit_train_batches=2
          trainer.limit_val_batches=2 data.num_workers=0)
  COMPILE=(model.compile=aot_eager)   # inductor needs minutes of C++ builds on a CPU
  CUDAGRAPHS=()                       # reduce-overhead is a CUDA mode
  TABLE=(experiment=table2_1_adam,table2_6_adamw_6l)   # 2 of the 7, to check the steps
  TABLE1=(experiment=table1_1_adam,table1_6_adamw_4l)
  SEEDS=seed=1,2
  JOBS=2 JOBS1=2
  BENCH=(--repeats 1 --warmup 0)
else
  EPOCHS=10 SHORT=3   # the study's 10 epochs; compile runs: 3 (the first one compiles)
  LIMITS=(trainer.accelerator=gpu)
  COMPILE=(model.compile=true)
  CUDAGRAPHS=(model.compile=true model.compile_mode=reduce-overhead)
  TABLE=('experiment=glob(table2_*)')
  TABLE1=('experiment=glob(table1_*)')
  SEEDS=seed=1,2,3
  JOBS=11 JOBS1=9   # 21 and 18 jobs; each job drives the GPU from one of the 16 cores
  BENCH=()
fi
STUDY=(model=vit optimizer=adamw model.num_layers=2 model.norm=pre test=false callbacks.progress_bar=null)
# the finite-loss guard checks every 50 steps instead of every step (one device sync each)
FAST=(model.attention=sdpa trainer.precision=bf16-mixed data.device_augment=true
      callbacks.finite_loss.check_every_n_steps=50)
TABLE_ARGS=(test=false callbacks.progress_bar=null "${FAST[@]}" "${LIMITS[@]}" trainer.max_epochs=$EPOCHS)
# the LSTM: fp32 (as the study) and the lean divergence check; no augmentation, its tokens in memory (no loader workers)
TABLE1_ARGS=(test=false callbacks.progress_bar=null trainer.precision=32-true data=wikitext2_offline
             data.num_workers=0 callbacks.finite_loss.check_every_n_steps=50 "${LIMITS[@]}" trainer.max_epochs=$EPOCHS)
RUNS=()
train() {  # name, seconds it may take, epochs, overrides...
  local name=$1 limit=$(($2 * SCALE)) epochs=$3; shift 3
  if [ "$(left)" -lt 30 ]; then say "skipped $name: too little time left"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  say "train $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$PY" train.py "${STUDY[@]}" "${LIMITS[@]}" trainer.max_epochs="$epochs" "$@" \
    hydra.run.dir="$WORK/logs/$name" >"$STEPLOGS/$name.log" 2>&1
  say "train $name exited $? after $((SECONDS - t0)) s wall"
  RUNS+=("$name=$WORK/logs/$name")
}
table() {  # name, seconds it may take, extra multirun arguments...
  local name=$1 limit=$(($2 * SCALE)); shift 2
  if [ "$(left)" -lt 40 ]; then say "skipped $name: too little time left"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  local sel=("${TABLE[@]}") args=("${TABLE_ARGS[@]}")
  [ -n "${TABLE_SEL:-}" ] && sel=("${!TABLE_SEL}") && args=("${!TABLE_ARGS_SEL}")
  say "table $name: ${sel[*]} $*"
  local t0=$SECONDS
  timeout "$limit" "$PY" train.py -m "${sel[@]}" "${args[@]}" "$@" \
    hydra.sweep.dir="$WORK/logs/$name" >"$STEPLOGS/$name.log" 2>&1
  local rc=$? wall=$((SECONDS - t0))
  local done_jobs
  done_jobs=$(grep -l '"status": "completed"' "$WORK"/logs/"$name"/*/metrics.json 2>/dev/null | wc -l)
  say "table $name exited $rc: $done_jobs jobs completed in $wall s wall (limit $limit s)"
  echo "{\"bench\": \"gpu_check_table\", \"name\": \"$name\", \"wall_s\": $wall, \"completed\": $done_jobs, \"rc\": $rc, \"limit_s\": $limit}" >>"$RESULTS"
  for d in "$WORK"/logs/"$name"/*/; do
    # named by its preset (the directory name holds every override, '=' included)
    [ -f "$d/metrics.json" ] && RUNS+=("$name:$(basename "$d" | sed -n 's/.*experiment=\([^,]*\).*/\1/p')=$d")
  done
}
bench() {  # seconds, script, args...
  local limit=$(($1 * SCALE)); shift
  if [ "$(left)" -lt 20 ]; then say "skipped $1: too little time left"; return; fi
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  say "bench $*"
  timeout "$limit" "$PY" "$@" "${BENCH[@]}" --out "$RESULTS" >>"$STEPLOGS/bench.log" 2>&1
  say "bench $1 exited $?"
}
DEV=$([ "$SMOKE" = 1 ] && echo cpu || echo cuda)
S() { if [ "$SMOKE" = 1 ]; then echo "$1"; else echo "$2"; fi; }  # smoke value | GPU value

pack() {  # the run directories (no checkpoints, no event files) and the step logs, into $OUT
  tar czf "$OUT/runs.tar.gz" -C "$WORK/logs" --exclude='*.ckpt' --exclude='tensorboard' \
    --exclude='events.out.tfevents.*' . 2>/dev/null
  tar czf "$OUT/logs.tar.gz" -C "$STEPLOGS" . 2>/dev/null
}
want table2 && { table table2_seeds 330 "$SEEDS" hydra/launcher=joblib hydra.launcher.n_jobs=$JOBS; pack; }
# 18 jobs, 9 at a time: two rounds of 10 epochs (about 11.4 s an epoch side by side on an H100)
want table1 && { TABLE_SEL='TABLE1[@]' TABLE_ARGS_SEL='TABLE1_ARGS[@]' table table1_seeds 280 "$SEEDS" \
  hydra/launcher=joblib hydra.launcher.n_jobs=$JOBS1; pack; }
want plain && { train plain 150 "$EPOCHS"; pack; }
if want overhead; then
  bench 45 bench/trainer_overhead.py --device "$DEV" --tiny --rounds "$(S 2 4)" --repeats "$(S 2 50)" --warmup "$(S 1 10)"
  bench 45 bench/trainer_overhead.py --device "$DEV" --repeats "$(S 1 30)" --warmup "$(S 0 5)"
  # the divergence guard's default reads the loss every step: one device sync a step on a GPU
  bench 45 bench/trainer_overhead.py --device "$DEV" --tiny --rounds "$(S 2 4)" --repeats "$(S 2 50)" --warmup "$(S 1 10)" \
    callbacks.finite_loss.check_every_n_steps=50
fi
if want compile; then
  train fast 45 "$SHORT" "${FAST[@]}"   # the uncompiled reference for the two below, alone on the GPU
  train compile 80 "$SHORT" "${FAST[@]}" "${COMPILE[@]}"
  [ ${#CUDAGRAPHS[@]} -gt 0 ] && train cudagraphs 80 "$SHORT" "${FAST[@]}" "${CUDAGRAPHS[@]}"
fi
[ ${#RUNS[@]} -gt 0 ] && "$PY" bench/gpu_summary.py "${RUNS[@]}" --out "$RESULTS" | tee -a "$SUMMARY"

# -- 4. the other paired benchmarks on this device --------------------------------------------------
if want bench; then
  bench 40 bench/attention.py --device "$DEV" --iters "$(S 1 20)"
  bench 40 bench/vit_vs_timm.py --device "$DEV" --iters "$(S 1 20)"
  bench 60 bench/data_throughput.py --device "$DEV" --batches "$(S 2 20)" --steps "$(S 1 20)"
  bench 30 bench/startup.py --device "$DEV" --repeats "$(S 1 3)" --warmup "$(S 0 1)"
  # shellcheck disable=SC2046
  bench 90 bench/memory.py --device "$DEV" --batches "$(S 1 5)" --only $(S 2 "2 6")
fi

"$PY" - "$RESULTS" <<'EOF' | tee -a "$SUMMARY"
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["bench"] == "gpu_check_table":
        target = ""
        print(f"{r['name']}: {r['completed']} jobs completed in {r['wall_s']} s wall{target}")
    elif "overhead_vs_floor" in r:
        extra = " ".join(o for o in r.get("overrides", []) if o.startswith("callbacks."))
        print(f"{r['bench']}{' (' + extra + ')' if extra else ''}: ours {r['overhead_ms_per_step']} ms/step over a plain loop, bare Lightning "
              f"{r['floor_ms_per_step']} ms/step: {r['overhead_vs_floor']} x (paired {r['overhead_vs_floor_paired']}, "
              f"range {r['overhead_vs_floor_range']}; target <= 2)")
    elif "ratio" in r:
        print(f"{r['bench']}: ratio {r['ratio']} paired {r['paired_ratio']} target {r.get('target')} "
              f"pass {r.get('pass')} medians {r['median']} {r['unit']}")
    elif r["bench"] == "memory_per_config":
        for k, v in r["configs"].items():
            print(f"memory config {k}: GPU {v['peak_gpu_mb']} MB (study {v['study_gpu_mb']}), RSS {v['peak_rss_mb']} MB")
EOF
pack
say "done in $((SECONDS - START)) s; results in $OUT"
