#!/usr/bin/env bash
# The documented CPU experiment (training/delf/README.md): train the tiny DELF on one
# synthetic benchmark, evaluate retrieval on another (held-out images), against the
# same network with random weights.  Usage: bash training/delf/run_synthetic_cpu.sh WORKDIR [STEPS]
set -euo pipefail
W=${1:?usage: run_synthetic_cpu.sh WORKDIR [STEPS]}
STEPS=${2:-2000}
mkdir -p "$W"
export TF_CPP_MIN_LOG_LEVEL=2

# 1. data: training images (seed 1, large) and the held-out benchmark (seed 0, default size)
[ -d "$W/synth_train" ] || d2r synthetic --out "$W/synth_train" --seed 1 --size large --name synthtrain
[ -d "$W/synth_eval" ] || d2r synthetic --out "$W/synth_eval" --seed 0 --size default
[ -f "$W/data/dataset.json" ] || python -m training.delf.prepare_data --synthetic "$W/synth_train" --out "$W/data" --num-shards 8

# 2. train; the random baseline is the same network saved at step 0 (same seed)
python -m training.delf.train --config synthetic_tiny_cpu --data "$W/data" --out "$W/run" --set training.max_steps=$STEPS
python -m training.delf.train --config synthetic_tiny_cpu --data "$W/data" --out "$W/run_random" --max-steps 0

# 3. export + PCA (learned on training images), index and query the held-out benchmark
DELF_SET=(--set features.delf.scales=[0.5,1.0] --set features.delf.score_threshold=0.0
          --set features.delf.max_features=300 --set codebook.num_words=256)
for name in run run_random; do
  [ -d "$W/model_$name" ] || python -m training.delf.export --checkpoint "$W/$name" --out "$W/model_$name" \
      --pca-from-dataset "$W/synth_train" --pca-max-images 150 --scales 0.5,1.0 --score-threshold 0 --max-features 300
  rm -rf "$W/index_$name" "$W/results_$name"
  python -m d2r.build_index --dataset-dir "$W/synth_eval" --out "$W/index_$name" --config delf-asmk-star \
      --set features.delf.model_path="$W/model_$name" --set features.delf.pca_path="$W/model_$name/pca" "${DELF_SET[@]}"
  python -m d2r.query --index "$W/index_$name" --dataset-dir "$W/synth_eval" --out "$W/results_$name"
done
