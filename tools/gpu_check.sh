#!/usr/bin/env bash
# The checks that need a GPU, as one short script (run it on a machine with CUDA):
#   bash tools/gpu_check.sh [OUT]        # results under OUT (default runs/gpu_check)
# 1. the test suite on CUDA (tests that pick the device run there), 2. `make demo`,
# 3. dint bench at the paper's scale: SIREN 5x256, one Kodak image, 5000 steps, every teacher
#    (and the default teacher given twice the steps and learning rate, as in benchmarks/2026-12-01-speed-teachers.md),
# 4. dint scale at 1 rank on the GPU: the cost model's compute term, measured (cost_model.md),
# 5. torch.compile against eager on the GPU (model.compile = auto compiles there), and the scoring
#    forward in float16 against float32 on the bench's default-teacher model.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_check}
mkdir -p "$out"
make install > "$out/install.log" 2>&1 || { echo "install failed: $out/install.log"; exit 1; }
.venv/bin/python -c "import torch; print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$out/device.txt"
.venv/bin/python -m pytest -q -x --timeout 600 > "$out/tests.log" 2>&1; echo "tests: $(tail -1 "$out/tests.log")"
make demo > "$out/demo.log" 2>&1; echo "demo: $(grep 'final PSNR' "$out/demo.log")"
.venv/bin/python experiments/bench_compile.py cuda 2>&1 | tee "$out/compile.log"
kodak=../shared/data/images/kodak/kodim01.png
if [ -f "$kodak" ]; then
  .venv/bin/dint-shard "$kodak" "$out/kodim01.zarr" --overwrite > /dev/null
  .venv/bin/dint bench --out "$out/bench" --eval-every 250 --data.store "$out/kodim01.zarr" \
    --model.width 256 --model.hidden_layers 5 --train.steps 5000 --train.micro_batch 0 --data.block_points 262144 \
    --teachers "full,uniform,int,default,default:train.steps=x2;train.lr=x2" \
    --eval.reconstruction false > "$out/bench.log" 2>&1
  echo "bench:"; cat "$out/bench/bench.md"
  .venv/bin/python experiments/bench_score_precision.py "$out/bench/runs/default-0/model.pt" "$out/kodim01.zarr" cuda \
    2>&1 | tee "$out/score_precision.log"
  .venv/bin/dint scale --ranks 1 --steps 500 --out "$out/scale" --data.store "$out/kodim01.zarr" \
    --model.width 256 --model.hidden_layers 5 --run.device cuda --train.micro_batch 0 \
    --data.block_points 262144 > "$out/scale.log" 2>&1
  echo "scale:"; cat "$out/scale/scaling.md" "$out/scale/cost_model.md"
fi
