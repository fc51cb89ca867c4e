#!/usr/bin/env bash
# The GPU checks of issues 5 and 12 as one script, for a machine with a CUDA GPU and this
# repository installed (pip install -e ".[test]"); run from the repository root. ~7 min.
#   1. the GPU-only tests (data resident on the device, batches stay there);
#   2. training-step images/s per journal config: fp32 / channels_last / bf16 / both;
#   3. `fashion-cnn fit --config configs/ultimate.yaml` on the GPU: wall time (goal: the 7 epochs
#      in under 15 s; the printed wall time also counts start-up and the final test).
set -euo pipefail
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -m pytest -q tests/test_data.py -k "gpu" -p no:cacheprovider
python benchmarks/bench_speed.py --device cuda --batch 512 --steps 50
python benchmarks/bench_accuracy.py configs/ultimate.yaml --seeds 0 1 2 -- --trainer.accelerator=gpu --trainer.devices=1
# 4. Issue 12: a study serially against Ray with 8 runs sharing the GPU (runs per minute, overhead).
python benchmarks/bench_study.py --study studies/normalisation --seeds 2 --train_batches 200 \
    --workers 8 --run_cpus 2 --run_gpus 0.125
