#!/usr/bin/env bash
# The scale-out measurements of benchmarks/2026-12-01-scale-out.md, on this machine's CPU cores:
#   bash benchmarks/scale_study.sh [OUT]            # results under OUT (default runs/scale_study)
# 1. selection bytes per rank, threshold against gather, at three signal sizes 16x apart;
# 2. imbalance with teacher.balance none and alltoall at 2, 4 and 8 ranks on an image with a
#    large flat region (Pluto's limb against black space; 8 ranks oversubscribe 2 cores:
#    counts, not speed);
# 3. weak scaling, 1 -> 2 ranks of one thread, each rank holding 256x512 points (balanced,
#    unbalanced, and `full`);
# 4. strong scaling, 1 -> 2 ranks, on the 512x512 of the weak run's second size;
# 5. weak (balanced, unbalanced) and strong scaling again at the paper's SIREN 5x256, 100 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/scale_study}
pluto=../shared/data/images/pluto/pluto_4408x4344_gray.jpg
[ -f "$pluto" ] || { echo "needs $pluto (../shared/data)"; exit 1; }
mkdir -p "$out/stores"
shard() { .venv/bin/dint-shard "$pluto" "$out/stores/$1.zarr" --crop "$2" --chunk "$3" --overwrite > /dev/null; }
shard p64 1800:1864,1800:1864 16
shard p256 1800:2056,1800:2056 64
shard p1024 1800:2824,1800:2824 256
shard flat512 256:768,256:768 64
shard w1 1600:1856,1600:2112 64
shard w2 1600:2112,1600:2112 64
common=(--model.width 64 --model.hidden_layers 3)

# 1. Selection bytes (the paper's INT, a top-k at every step, 2 ranks, 5 steps).
for n in ${BYTES_SIZES-64 256 1024}; do
  for topk in threshold gather; do
    OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc_per_node 2 -m dint.train --data.store "$out/stores/p$n.zarr" \
      --run.dir "$out/bytes/$topk-$n" --run.device cpu "${common[@]}" --train.steps 5 --metrics.log_every 1 \
      --teacher.strategy int --teacher.random_share 0 --teacher.error_refresh 1 --teacher.topk $topk \
      --eval.reconstruction false --checkpoint.resume never > /dev/null 2>&1
    echo "bytes: $topk ${n}x$n: $(tail -1 "$out/bytes/$topk-$n/metrics.jsonl" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["select_bytes_per_rank"])')"
  done
done

# 2. Imbalance on the flat image.
for balance in none alltoall; do
  .venv/bin/dint scale --config configs/cpu/scale_image.toml --data.store "$out/stores/flat512.zarr" --ranks 2,4,8 \
    --steps 30 --eval-every 30 --teacher.balance $balance --out "$out/imbalance-$balance" > /dev/null
  .venv/bin/python -c 'import json, sys
for r in json.load(open(sys.argv[1]))["records"]:
    print("imbalance ({}): {} ranks: trained {:.4f}, selected {:.4f}, balance bytes/step {:,.0f}".format(
        sys.argv[2], r["ranks"], r["imbalance"], r["imbalance_before_balance"], r["balance_bytes_per_step"]))' \
    "$out/imbalance-$balance/scaling.json" $balance
done

# 3. Weak scaling, 4. strong scaling.
# Weak: balanced ranks (the report's table), then without balancing, then `full` (no selection:
# the ceiling this machine sets when two ranks share its memory system).
.venv/bin/dint scale --config configs/cpu/scale_image.toml --mode weak --ranks 1,2 \
  --data.store "$out/stores/w{ranks}.zarr" --teacher.balance alltoall --out "$out/weak_bal"
.venv/bin/dint scale --config configs/cpu/scale_image.toml --mode weak --ranks 1,2 \
  --data.store "$out/stores/w{ranks}.zarr" --out "$out/weak"
.venv/bin/dint scale --config configs/cpu/scale_image.toml --mode weak --ranks 1,2 --steps 100 \
  --data.store "$out/stores/w{ranks}.zarr" --teacher.strategy full --out "$out/weak_full"
.venv/bin/dint scale --config configs/cpu/scale_image.toml --ranks 1,2 --data.store "$out/stores/w2.zarr" \
  --out "$out/strong"

# 5. The paper's SIREN (5x256): a step of about 0.24 s a rank instead of 0.02 s, so the fixed
# costs of a step between ranks (collectives, waits) weigh as they would on a real workload.
paper=(--model.width 256 --model.hidden_layers 5 --steps 100 --eval-every 50)
.venv/bin/dint scale --config configs/cpu/scale_image.toml --mode weak --ranks 1,2 "${paper[@]}" \
  --data.store "$out/stores/w{ranks}.zarr" --teacher.balance alltoall --out "$out/weak_paper_bal"
.venv/bin/dint scale --config configs/cpu/scale_image.toml --mode weak --ranks 1,2 "${paper[@]}" \
  --data.store "$out/stores/w{ranks}.zarr" --out "$out/weak_paper"
.venv/bin/dint scale --config configs/cpu/scale_image.toml --ranks 1,2 "${paper[@]}" \
  --data.store "$out/stores/w2.zarr" --out "$out/strong_paper"
