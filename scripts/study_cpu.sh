#!/usr/bin/env bash
# The study at budget=cpu on a 2-core CPU, three seeds, resumable: rerun this script and every sweep
# continues where it stopped (completed jobs skipped, stopped ones resumed from their last.ckpt), and
# a fresh clone continues from the run records published under docs/results/cpu/ (step 0).
#   nice -n 10 bash scripts/study_cpu.sh        # hours: see REPRODUCTION.md for how far it got
# Sweeps go to $STUDY_DIR (default logs/study); the report: python -m analysis logs/study --out <dir>
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DIR=${STUDY_DIR:-logs/study}
QUIET=(callbacks.progress_bar=null)
# 0. The published records (docs/results/cpu/) copied back into $DIR: on a fresh clone every run
#    published before has its result below and is skipped, so the study continues where the
#    repository's records stop. Publish what finished before the machine goes (REPRODUCTION.md).
restore() { if [ -d "$1" ]; then "$PY" scripts/publish_runs.py "$1" "$2" | tail -1; fi; }
restore docs/results/cpu/runs "$DIR"
restore docs/results/cpu/tuning/runs "$DIR/tuning"
# 1. bf16 vs fp32 on Table 2 config 2 (the CPU default's accuracy check, paired by seed)
"$PY" train.py -m experiment=table2_2_adamw seed=1,2,3 budget=cpu trainer.precision=32-true "${QUIET[@]}" \
  hydra.sweep.dir="$DIR/table2_2_fp32"
# 2. Table 2, every configuration x 3 seeds (configurations outer: each one's seeds finish together).
#    Order: config 2 first (it completes step 1's paired check), then the post- vs pre-norm pair at 6
#    layers, then the optimizers, then depth 4.
T2=table2_2_adamw,table2_6_adamw_6l,table2_7_adamw_6l_post,table2_1_adam,table2_3_sgd,table2_4_momentum,table2_5_adamw_4l
"$PY" train.py -m experiment=$T2 seed=1,2,3 budget=cpu "${QUIET[@]}" hydra.sweep.dir="$DIR/table2"
# 3. Table 1 on the offline split (no WikiText-2 train split here), 3 epochs x 3 seeds
"$PY" train.py -m 'experiment=glob(table1_*)' seed=1,2,3 budget=cpu data=wikitext2_offline "${QUIET[@]}" \
  hydra.sweep.dir="$DIR/table1"
# 4. Optimizers, tuned equally (docs/optimizer-tuning.md): search, confirm with seeds 1-3, AdamW's
#    speed-up runs; about 12 h for the ViT and 13 h for the LSTM; resumable like the sweeps above;
#    each sweep's finished runs are published to docs/results/cpu/tuning/runs as it ends (commit them)
"$PY" -m analysis.tuning run vit --log-dir "$DIR" --publish docs/results/cpu/tuning/runs "${QUIET[@]}"
"$PY" -m analysis.tuning run lstm --log-dir "$DIR" --publish docs/results/cpu/tuning/runs "${QUIET[@]}"
