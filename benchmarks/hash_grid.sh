#!/usr/bin/env bash
# The hash-grid field's measurements (benchmarks/2026-12-07-hash-grid.md), every table's commands.
#
#   bash benchmarks/hash_grid.sh smoke [PART ...]   # seconds each: proves every command runs (any machine)
#   bash benchmarks/hash_grid.sh full  [PART ...]   # the tables: hours, on a quiet 2-core machine
#
# PARTs (default: all, in this order): stores, choices, gradients, equal_time, pluto, teachers,
# gigapixel, weak. Results go to $OUT (default runs/hash_grid/MODE); stores to runs/stores/.
# PYTHON (default .venv/bin/python) runs everything; the repository root is the working folder.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-smoke}
shift || true
PARTS=${*:-stores choices gradients equal_time pluto teachers gigapixel weak}
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/hash_grid/$MODE}
DATA=../shared/data
STORES=runs/stores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT" "$STORES"
dint() { "$PYTHON" -m dint.commands.cli "$@"; }
train() { "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$1" -m dint.train "${@:2}"; }
shard() { [ -e "$2" ] || dint shard "$@"; }
if [ "$MODE" = smoke ]; then
  SECONDS_EQUAL=5 SECONDS_TEN_MINUTES=20 STEPS_CHOICE=5 STEPS_GRADIENT=5 BENCH_STEPS=20 SCALE_STEPS=10 CALIBRATION=4
  EQUAL_SIGNALS="kodim01_crop256 headsq librispeech" SIREN_LRS="1e-3" BIG_SIREN_LRS="1e-4" HASH_LRS="3e-3"
  CHOICE_SIGNALS="kodim01_crop256" BENCH_SIGNALS="kodim01_crop256" PLUTO=pluto-1024 LARGE=2048
elif [ "$MODE" = full ]; then
  SECONDS_EQUAL=90 SECONDS_TEN_MINUTES=600 STEPS_CHOICE=200 STEPS_GRADIENT=100 BENCH_STEPS=1000 SCALE_STEPS=200 CALIBRATION=20
  EQUAL_SIGNALS="kodim01 kodim02 kodim03 kodim05 pluto headsq armadillo-128 librispeech"
  SIREN_LRS="3e-4 1e-3 3e-3" BIG_SIREN_LRS="3e-5 1e-4 3e-4" HASH_LRS="1e-3 3e-3 1e-2"
  CHOICE_SIGNALS="kodim01 pluto-1024 librispeech headsq armadillo-128" BENCH_SIGNALS="pluto-1024 kodim01 kodim02"
  PLUTO=pluto LARGE=16384
else
  echo "usage: bash benchmarks/hash_grid.sh smoke|full [PART ...]" >&2
  exit 2
fi

# Steps that take about $1 seconds of training on 2 ranks with the config and overrides that follow,
# from $CALIBRATION steps measured.
steps_for() {
  local seconds=$1 run=$OUT/calibration
  shift
  rm -rf "$run"
  train 2 "$@" --train.steps $CALIBRATION --eval.every 0 --eval.reconstruction false --run.dir "$run" \
    --checkpoint.resume never --metrics.tensorboard false --metrics.plots false --metrics.selection_maps '[]' >/dev/null
  "$PYTHON" -c "import json,sys; s=json.load(open('$run/summary.json')); print(max($CALIBRATION, int($seconds * $CALIBRATION / s['train_seconds'])))"
}

for part in $PARTS; do
  echo "== $part ($MODE)" >&2
  case $part in
  stores)
    for k in kodim01 kodim02 kodim03 kodim05; do shard $DATA/images/kodak/$k.png $STORES/$k.zarr; done
    shard $DATA/images/pluto/pluto_4408x4344_gray.jpg $STORES/pluto.zarr --chunk 512
    shard $DATA/images/pluto/pluto_4408x4344_gray.jpg $STORES/pluto-1024.zarr --crop 1700:2724,1700:2724 --chunk 256
    shard $DATA/images/kodak/kodim01.png $STORES/kodim01_crop256.zarr --crop 128:384,256:512 --chunk 128
    shard $DATA/volumes/headsq_93x64x64_uint16.npy $STORES/headsq.zarr
    shard $DATA/meshes/armadillo.obj $STORES/armadillo-128.zarr --resolution 128
    shard $DATA/audio/librispeech_1272-128104-0000.wav $STORES/librispeech.zarr
    shard $DATA/images/pluto/pluto_4408x4344_gray.jpg $STORES/w1.zarr --crop 1600:1856,1600:2112 --chunk 64
    shard $DATA/images/pluto/pluto_4408x4344_gray.jpg $STORES/w2.zarr --crop 1600:2112,1600:2112 --chunk 64
    if [ ! -e $STORES/pluto-$LARGE.zarr ]; then
      "$PYTHON" tools/make_large_signal.py image --source $DATA/images/pluto/pluto_4408x4344_gray.jpg \
        --size $LARGE $STORES/pluto-$LARGE.tif
      dint shard $STORES/pluto-$LARGE.tif $STORES/pluto-$LARGE.zarr --chunk 512
    fi
    ;;
  choices)  # the hash field's defaults, at equal steps (independent of the machine's load)
    for store in $CHOICE_SIGNALS; do
      for activation in relu sine; do
        for lr in 1e-3 3e-3; do
          "$PYTHON" benchmarks/equal_time.py $STORES/$store.zarr --seconds 1e9 --max-steps $STEPS_CHOICE \
            --activation $activation --lr $lr --table-lr-factor 10 | tail -1
        done
      done
    done >"$OUT/choices.jsonl"
    for variant in "--lr 1e-2 --table-lr-factor 1" "--lr 1e-2 --table-lr-factor 1 --eps 1e-8" \
      "--lr 1e-3 --table-lr-factor 1" "--lr 1e-2 --table-lr-factor 3" "--lr 3e-3 --table-lr-factor 30"; do
      "$PYTHON" benchmarks/equal_time.py $STORES/${CHOICE_SIGNALS%% *}.zarr --seconds 1e9 \
        --max-steps $STEPS_CHOICE --activation relu $variant | tail -1
    done >>"$OUT/choices.jsonl"
    ;;
  gradients)  # dense table gradients and fused Adam against sparse ones and SparseAdam, one process
    for variant in "--table-grad dense --adam fused" "--table-grad dense --adam loop" \
      "--table-grad sparse" "--table-grad dense --adam fused" "--table-grad sparse"; do
      "$PYTHON" benchmarks/equal_time.py $STORES/pluto-1024.zarr --seconds 1e9 --max-steps $STEPS_GRADIENT \
        --lr 1e-2 --table-lr-factor 1 $variant | tail -1
    done >"$OUT/gradients.jsonl"
    ;;
  equal_time)  # SIREN 3x64, SIREN 5x256 and the hash field at $SECONDS_EQUAL s, each at its best lr of three
    for store in $EQUAL_SIGNALS; do
      for lr in $SIREN_LRS; do
        "$PYTHON" benchmarks/equal_time.py $STORES/$store.zarr --seconds $SECONDS_EQUAL --field siren \
          --width 64 --layers 3 --lr $lr | tail -1
      done
      for lr in $BIG_SIREN_LRS; do
        "$PYTHON" benchmarks/equal_time.py $STORES/$store.zarr --seconds $SECONDS_EQUAL --field siren \
          --width 256 --layers 5 --lr $lr | tail -1
      done
      for lr in $HASH_LRS; do
        "$PYTHON" benchmarks/equal_time.py $STORES/$store.zarr --seconds $SECONDS_EQUAL --field hashgrid \
          --lr $lr | tail -1
      done
    done >"$OUT/equal_time.jsonl"
    ;;
  pluto)  # the full Pluto on 2 ranks, ten minutes of training; time to the INT paper's 33.01 dB
    steps=$(steps_for $SECONDS_TEN_MINUTES --config configs/hash/image.toml --data.store $STORES/$PLUTO.zarr)
    rm -rf "$OUT/pluto"
    train 2 --config configs/hash/image.toml --data.store $STORES/$PLUTO.zarr --run.dir "$OUT/pluto" \
      --train.steps "$steps" --eval.every $((steps / 10 > 0 ? steps / 10 : 1)) --checkpoint.resume never
    "$PYTHON" -c "
import json
from dint.train.metrics import quality_curve, time_to_reach
lines = [json.loads(l) for l in open('$OUT/pluto/metrics.jsonl')]
curve = quality_curve(lines, 'psnr')
print(json.dumps({'steps': $steps, 'final': curve[-1], 'seconds_to_33.01': time_to_reach(curve, 33.01),
                  'seconds_to_40': time_to_reach(curve, 40.0)}))" | tee "$OUT/pluto.json"
    ;;
  teachers)  # dint bench on the hash field: full, uniform, the paper's INT and the default teacher
    for store in $BENCH_SIGNALS; do
      rm -rf "$OUT/bench/$store"
      dint bench --config configs/hash/image.toml --data.store $STORES/$store.zarr --train.steps $BENCH_STEPS \
        --run.device cpu --teachers full,uniform,int,default --eval-every $((BENCH_STEPS / 20)) \
        --out "$OUT/bench/$store"
    done
    [ "$MODE" = smoke ] || dint bench --from "$OUT/bench/pluto-1024" --from "$OUT/bench/kodim01" \
      --from "$OUT/bench/kodim02" --out "$OUT/bench"
    ;;
  gigapixel)  # the tiled Pluto, streamed under a 64 MB data budget on 2 ranks, ten minutes of training
    steps=$(steps_for $SECONDS_TEN_MINUTES --config configs/hash/gigapixel.toml --data.store $STORES/pluto-$LARGE.zarr)
    rm -rf "$OUT/gigapixel"
    train 2 --config configs/hash/gigapixel.toml --data.store $STORES/pluto-$LARGE.zarr --run.dir "$OUT/gigapixel" \
      --train.steps "$steps" --eval.every "$steps" --checkpoint.resume never
    "$PYTHON" -c "
import json
s = json.load(open('$OUT/gigapixel/summary.json'))
print(json.dumps({k: s[k] for k in ('final_psnr', 'steps', 'train_seconds', 'peak_rss_mb_per_rank',
                                    'optimizer_state_bytes_per_rank', 'params', 'streamed')}))" | tee "$OUT/gigapixel.json"
    ;;
  weak)  # weak scaling 1 -> 2 ranks with the hash field: the gradient exchange's share of the step
    rm -rf "$OUT/weak"
    dint scale --config configs/hash/image.toml --mode weak --ranks 1,2 --data.store "$STORES/w{ranks}.zarr" \
      --steps $SCALE_STEPS --run.device cpu --eval.every $SCALE_STEPS --out "$OUT/weak"
    ;;
  *)
    echo "unknown part $part" >&2
    exit 2
    ;;
  esac
done
