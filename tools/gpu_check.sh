#!/usr/bin/env bash
# The checks that need a GPU, as one bounded script that fetches nothing (issue 25):
#   bash tools/gpu_check.sh [--dry-run] [--wheels DIR] OUT
# Run on a CUDA machine with its own python3 and torch (PYTHON=... to name another interpreter),
# after `bash tools/gpu_wheels.sh DIR` on a machine that reaches PyPI (DIR default .whl). The
# wheels in DIR are installed into a temporary folder put first on PYTHONPATH; nothing else is
# installed or fetched. Figures go under OUT, each part's as soon as it ends, and OUT/summary.md
# gets one line per part, so a run cut short still returns what it measured. Parts, by value:
#   0 set-up: the wheels, what the machine has (0-setup/environment.json), the Kodak store
#   1 dint's CUDA path: device choice and nccl on one rank, every teacher (dint bench under torchrun),
#     a run killed and resumed from its checkpoint (torchrun --max-restarts 1), dint render
#   2 seconds per step and points per second against a plain PyTorch loop on the same GPU, eager and
#     compiled, float32, TF32 and bfloat16 (benchmarks/framework_overhead.py)
#   3 the paper-scale bench: SIREN 5x256, kodim01, full, uniform, int and default, with as many steps
#     as fit its time (from part 2's step time); float16 scoring on its default-teacher model
#   4 dint scale at 1 rank on the GPU: the cost model's compute term, measured
#   5 the hash-grid field on the full Pluto image (a crop of it in a dry run)
# Each part runs under its own timeout, and the whole under DINT_CHECK_SECONDS (480 on a GPU).
# --dry-run runs the same path on a CPU machine: gloo instead of nccl, a small crop, small models,
# a few steps, torch.compile's aot_eager backend; when PYTHON has no torch it stands in the GPU
# machine's python3 with a venv of this machine's own torch (pip, from local disk) and the wheels
# of DIR.machine (made beside DIR by gpu_wheels.sh for a Python other than 3.12). Exit 1 if any part
# failed or timed out, 2 on bad usage.
set -euo pipefail

usage="usage: bash tools/gpu_check.sh [--dry-run] [--wheels DIR] OUT"
dry=0 wheels=${DINT_WHEELS:-.whl} out=""
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry=1; shift ;;
    --wheels) wheels=${2:?$usage}; shift 2 ;;
    --wheels=*) wheels=${1#*=}; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "$usage" >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "$usage" >&2; exit 2; }; out=$1; shift ;;
  esac
done
[ -n "$out" ] || { echo "$usage" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -d "$wheels" ] && wheels=$(cd "$wheels" && pwd)
cd "$(dirname "$0")/.."
[ -d "$wheels" ] || wheels=$PWD/$wheels
[ -d "$wheels" ] || { echo "gpu_check: no wheel folder $wheels: make it with tools/gpu_wheels.sh (see $0)" >&2; exit 2; }

started=$SECONDS
if [ "$dry" = 1 ]; then
  total=${DINT_CHECK_SECONDS:-2400}
  limits=(0 600 600 600 300 300)  # seconds a part may take, parts 1-5 (a slow, shared CPU)
else
  total=${DINT_CHECK_SECONDS:-480}
  limits=(0 150 90 150 45 60)
fi
py=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/dint-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
printf '| part | name | status | time | figures |\n|---|---|---|---|---|\n' > "$out/summary.md"
failed=0

say() { echo "gpu_check: $*"; }
line() {  # line PART NAME STATUS SECONDS HEADLINE: one row of OUT/summary.md, as the part ends
  printf '| %s | %s | %s | %s s | %s |\n' "$1" "$2" "$3" "$4" "$5" >> "$out/summary.md"
  say "part $1 ($2): $3 in $4 s${5:+ — $5}"
}

# --- 0. set-up: the interpreter, the wheels, what the machine has, the store --------------------
setup_began=$SECONDS
mkdir -p "$out/0-setup"
if [ "$dry" = 1 ] && ! "$py" -c "import torch" 2>/dev/null; then
  # No torch in PYTHON: stand in the GPU machine's python3 with a venv of this machine's torch
  # (from local disk, as `make install` takes it) and what the GPU machine has (DIR.machine).
  machine=$wheels.machine
  [ -d "$machine" ] || { echo "gpu_check: $py has no torch and $machine is missing: run" \
    "tools/gpu_wheels.sh $wheels --python-version $("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" >&2; exit 2; }
  torch_pin=${DINT_DRY_TORCH:-$(sed -n 's/^TORCH_PIN := //p' Makefile)}
  venv=$machine/python
  stamp="$torch_pin $(cd "$machine" && ls *.whl | tr '\n' ' ')"
  if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "standing in the GPU machine's python3: $venv ($torch_pin from local disk, $machine/*.whl)"
    rm -rf "$venv"
    "$py" -m venv --without-pip "$venv"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # Local disk only: an unreachable index is given up at once (--retries 0), as on the GPU machine.
    timeout 600 "$py" -m pip install -q --no-deps --no-compile --retries 0 --timeout 5 --target "$site" \
      "$torch_pin" "$machine"/*.whl > "$out/0-setup/machine.log" 2>&1 \
      || { echo "gpu_check: could not install $torch_pin from local disk ($out/0-setup/machine.log)" >&2; exit 1; }
    echo "$stamp" > "$venv/.stamp"
  fi
  py=$venv/bin/python
fi
pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$(cat "$wheels/PYTHON_VERSION" 2>/dev/null)" != "$pyver" ]; then
  echo "gpu_check: $wheels holds wheels for Python $(cat "$wheels/PYTHON_VERSION" 2>/dev/null || echo '?'), $py is" \
    "$pyver: run tools/gpu_wheels.sh $wheels --python-version $pyver" >&2
  exit 2
fi
# pip of the interpreter itself, or (a venv without pip) of python3 of the same version
pip_py=$py
"$py" -m pip --version > /dev/null 2>&1 || pip_py=python3
site=$work/site
timeout 120 "$pip_py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl \
  > "$out/0-setup/install.log" 2>&1 || { echo "gpu_check: installing $wheels failed: $out/0-setup/install.log" >&2; exit 1; }
if ! "$py" -c 'import numpy, sys; sys.exit(int(numpy.__version__.split(".")[0]) < 2)' 2>/dev/null; then
  say "the machine's numpy is missing or older than 2.0 (zarr 3's floor): installing $wheels/fallback"
  timeout 120 "$pip_py" -m pip install -q --no-index --no-deps --no-compile --target "$work/fallback" \
    "$wheels"/fallback/*.whl >> "$out/0-setup/install.log" 2>&1
  site=$site:$work/fallback
fi
export PYTHONPATH=$site:$PWD PYTHONNOUSERSITE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
cuda_flag=--cuda device=cuda
[ "$dry" = 1 ] && cuda_flag="" device=cpu
if ! timeout 120 "$py" tools/gpu_check.py environment "$out/0-setup/environment.json" $cuda_flag \
  > "$out/0-setup/environment.txt" 2> "$out/0-setup/environment.err"; then
  cat "$out/0-setup/environment.err" >&2
  line 0 set-up FAILED $((SECONDS - setup_began)) "$(head -c 300 "$out/0-setup/environment.err" | tr '\n' ' ')"
  exit 1
fi

# The signal: kodim01 (768x512 RGB), from DINT_DATA, shared/data, ../shared/data or DIR/data;
# scikit-image's cameraman (512x512 grey) if none has it.
kodak=builtin:cameraman
for data in ${DINT_DATA:-} shared/data ../shared/data "$wheels/data"; do
  for candidate in "$data/images/kodak/kodim01.png" "$data/kodim01.png"; do
    if [ "$kodak" = builtin:cameraman ] && [ -f "$candidate" ]; then kodak=$candidate; fi
  done
done
# Part 5's signal: the Pluto image (4408x4344 grey), found as kodim01 is; part 5 is skipped without it.
pluto=""
for data in ${DINT_DATA:-} shared/data ../shared/data "$wheels/data"; do
  for candidate in "$data/images/pluto/pluto_4408x4344_gray.jpg" "$data/pluto_4408x4344_gray.jpg"; do
    if [ -z "$pluto" ] && [ -f "$candidate" ]; then pluto=$candidate; fi
  done
done
store=$work/signal.zarr
crop=()
[ "$dry" = 1 ] && crop=(--crop 0:64,0:96)  # 6,144 points: the same path, small
timeout 120 "$py" -m dint shard "$kodak" "$store" "${crop[@]}" > "$out/0-setup/store.txt" 2>&1 \
  || { cat "$out/0-setup/store.txt" >&2; line 0 set-up FAILED $((SECONDS - setup_began)) "dint shard $kodak"; exit 1; }
line 0 set-up ok $((SECONDS - setup_began)) "$(cat "$out/0-setup/environment.txt"); signal $(basename "$kodak")$(
  [ "$kodak" = builtin:cameraman ] && echo ' (kodim01.png not found: set DINT_DATA)')"

# Sizes: the GPU's, or the dry run's (the same commands, small enough for two CPU cores).
if [ "$dry" = 1 ]; then
  p1_model="--model.width 16 --model.hidden_layers 2" p1_steps=20 p1_eval=10 p1_every=10 p1_kill=15
  p2_args="--width 32 --layers 2 --warmup 2 --steps 3 --backend aot_eager"
  p3_model="--model.width 32 --model.hidden_layers 2" p3_variant=dint:fp32:eager p3_seconds=60 p3_range="20 40 10 20"
  p4_model="--model.width 32 --model.hidden_layers 2" p4_steps=20
  p5_crop="--crop 0:256,0:256" p5_steps=20
else
  p1_model="--model.width 64 --model.hidden_layers 3" p1_steps=200 p1_eval=50 p1_every=100 p1_kill=150
  p2_args="--width 256 --layers 5 --warmup 10 --steps 100 --backend inductor --budget 60"
  # 150 s less about 50 s of start-up, compilation, evaluations, pictures and the float16 check
  p3_model="--model.width 256 --model.hidden_layers 5" p3_variant=dint:fp32:compiled p3_seconds=100
  p3_range="200 5000 100 1000"  # fewest, most, rounded to, unmeasured
  p4_model="--model.width 256 --model.hidden_layers 5" p4_steps=500
  p5_crop="" p5_steps=300
fi
export py out store device cuda_flag kodak p1_model p1_steps p1_eval p1_every p1_kill p2_args p3_model p3_variant \
  p3_seconds p3_range p4_model p4_steps pluto p5_crop p5_steps work
torchrun() { "$py" -m torch.distributed.run --standalone --nproc_per_node 1 "$@"; }
export -f torchrun

# --- the parts: each does its work under its timeout, then collect_N writes its figures ---------
part_1() {  # dint's CUDA path
  local d=$out/1-cuda-path
  torchrun tools/gpu_check.py group "$d/group.json" $cuda_flag > "$d/group.txt" 2> "$d/group.log"
  torchrun -m dint bench --out "$d/teachers" --eval-every "$p1_eval" --teachers full,uniform,int,default \
    --data.store "$store" $p1_model --train.steps "$p1_steps" > "$d/teachers.log" 2>&1
  # Killed at step p1_kill in its first attempt; torchrun restarts it, and it resumes from the checkpoint.
  DINT_FAULT=kill@$p1_kill torchrun --max-restarts 1 -m dint.train --data.store "$store" $p1_model \
    --train.steps "$p1_steps" --checkpoint.every "$p1_every" --run.dir "$d/resumed" > "$d/resumed.log" 2>&1
  "$py" tools/gpu_check.py resumed "$d/resumed" "$d/resumed.log" "$d/teachers/runs/default-0" "$d/resumed.json" \
    > "$d/resumed.txt"
  "$py" -m dint render "$d/resumed" --out "$d/render.zarr" --scale 2 --device "$device" > "$d/render.txt" 2>&1
}
collect_1() {
  local d=$out/1-cuda-path runs=()
  for r in "$d"/teachers/runs/*-0 "$d/resumed"; do [ -d "$r" ] && runs+=("$r"); done
  [ ${#runs[@]} = 0 ] || "$py" tools/gpu_check.py runs "$d/runs.md" "${runs[@]}" > "$d/runs.txt" 2>&1 || true
  {
    echo "group: $(cat "$d/group.txt" 2>/dev/null)"
    echo "teachers: $(cat "$d/runs.txt" 2>/dev/null)"
    echo "resume: $(cat "$d/resumed.txt" 2>/dev/null)"
    echo "render: $(tail -1 "$d/render.txt" 2>/dev/null)"
  } > "$d/figures.txt"
  cat "$d/runs.md" >> "$d/figures.txt" 2>/dev/null || true
  sed -n 's/^\(group\|teachers\|resume\): //p' "$d/figures.txt" | grep -v '^$' | paste -sd ';' -
}

part_2() {  # the framework's overhead against a plain loop
  local d=$out/2-overhead
  "$py" benchmarks/framework_overhead.py "$store" --out "$d" --device "$device" $p2_args > "$d/overhead.txt" 2>&1
}
collect_2() { tail -1 "$out/2-overhead/overhead.txt" 2>/dev/null; }

part_3() {  # the paper-scale bench, as many steps as fit
  local d=$out/3-paper-bench steps
  steps=$("$py" tools/gpu_check.py steps "$out/2-overhead/overhead.jsonl" "$p3_variant" "$p3_seconds" 2.8 $p3_range \
    2> "$d/steps.txt")
  cat "$d/steps.txt"
  "$py" -m dint bench --out "$d/bench" --eval-every $((steps / 10)) --teachers full,uniform,int,default \
    --data.store "$store" $p3_model --train.steps "$steps" --train.micro_batch 0 --data.block_points 262144 \
    > "$d/bench.log" 2>&1
  "$py" experiments/bench_score_precision.py "$d/bench/runs/default-0/model.pt" "$store" "$device" \
    > "$d/score_precision.txt" 2>&1
}
collect_3() {
  local d=$out/3-paper-bench runs=()
  for r in "$d"/bench/runs/*-0; do [ -d "$r" ] && runs+=("$r"); done
  [ ${#runs[@]} = 0 ] || "$py" tools/gpu_check.py runs "$d/runs.md" "${runs[@]}" > "$d/runs.txt" 2>&1 || true
  echo "$(cat "$d/steps.txt" 2>/dev/null | sed 's/^gpu_check: //'); $(cat "$d/runs.txt" 2>/dev/null)"
}

part_4() {  # dint scale at 1 rank: the cost model's compute term
  local d=$out/4-scale
  "$py" -m dint scale --ranks 1 --steps "$p4_steps" --out "$d/scale" --timeout 120 --data.store "$store" $p4_model \
    --run.device "$device" --train.micro_batch 0 --data.block_points 262144 > "$d/scale.log" 2>&1
  "$py" tools/gpu_check.py scale "$d/scale/scaling.json" "$d/compute.json" > "$d/compute.txt"
}
collect_4() { cat "$out/4-scale/compute.txt" 2>/dev/null; }

part_5() {  # the hash-grid field on the full Pluto image: configs/hash/image.toml, one rank
  local d=$out/5-hash-grid
  "$py" -m dint shard "$pluto" "$work/pluto.zarr" $p5_crop > "$d/store.txt" 2>&1
  "$py" -m dint train --config configs/hash/image.toml --data.store "$work/pluto.zarr" --run.dir "$d/run" \
    --run.device "$device" --train.steps "$p5_steps" --train.micro_batch 0 --eval.every $((p5_steps / 4)) \
    --eval.reconstruction false \
    > "$d/train.log" 2>&1
}
collect_5() { grep '^dint.train: final' "$out/5-hash-grid/train.log" 2>/dev/null; }

prune() {  # what comes back stays small: no checkpoints, stores or TensorBoard logs
  find "$1" -depth \( -name checkpoints -o -name '*.zarr' -o -name tensorboard \) -type d -exec rm -rf {} + \
    2>/dev/null || true
  find "$1" -name model.pt ! -path '*default-0*' -delete 2>/dev/null || true
}
export -f part_1 part_2 part_3 part_4 part_5

run_part() {  # run_part N NAME: part_N under its timeout (at most what is left of the total)
  local n=$1 name=$2 folder began=$SECONDS limit=${limits[$1]} left rc=0 status headline
  folder=$out/$n-$name
  left=$((total - (SECONDS - started) - 45))  # room to stop the part (20 s) and collect its figures (20 s)
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 10 ]; then
    line "$n" "$name" "not run" 0 "the ${total} s budget is spent"; failed=1; return
  fi
  mkdir -p "$folder"
  timeout -k 20 "$limit" bash -c "set -euo pipefail; part_$n" > "$folder/log.txt" 2>&1 || rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="TIMED OUT after $limit s"; failed=1 ;;
    *) status="FAILED (exit $rc, $n-$name/log.txt)"; failed=1 ;;
  esac
  headline=$(timeout 20 bash -c "collect_$n" 2>> "$folder/log.txt" | tr '\n|' ' /' | head -c 900 || true)
  prune "$folder"
  line "$n" "$name" "$status" $((SECONDS - began)) "$headline"
}
export -f collect_1 collect_2 collect_3 collect_4 collect_5

run_part 1 cuda-path
run_part 2 overhead
run_part 3 paper-bench
run_part 4 scale
if [ -n "$pluto" ]; then
  run_part 5 hash-grid
else
  line 5 hash-grid skipped 0 "pluto_4408x4344_gray.jpg not found (DINT_DATA, shared/data, ../shared/data or DIR/data)"
fi

{
  echo
  echo "$([ "$dry" = 1 ] && echo 'Dry run (CPU counterparts)' || echo 'GPU run'), $(date -u +%Y-%m-%dT%H:%MZ)," \
    "$((SECONDS - started)) s in all (budget $total s); per part: OUT/N-NAME/ (log.txt, figures)."
} >> "$out/summary.md"
say "$((SECONDS - started)) s in all; $out/summary.md"
exit $failed
