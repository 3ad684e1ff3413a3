#!/usr/bin/env bash
# Gather, on a machine that reaches PyPI, the wheels tools/gpu_check.sh installs on a GPU machine
# that reaches nothing:
#   bash tools/gpu_wheels.sh DIR [--python-version X.Y]     # default 3.12, the lent GPU machine's
# DIR (e.g. .whl, ignored by git) then travels with the working tree: at most 60 MiB. It also
# carries the checks' signal, DIR/data/kodim01.png, when shared/data or ../shared/data has it.
#
# The GPU machine's own python3 brings torch (a CUDA build) and numpy, scipy, pillow, scikit-image,
# tifffile, matplotlib, tensorboard, typer, tqdm, psutil (MACHINE_HAS below). DIR holds what the
# checks import beyond that, one pinned version of each (the versions dint is tested with), with
# each one's own runtime needs:
#   DIR/*.whl           installed always (zarr, numcodecs, dask, tomli-w, ...);
#   DIR/fallback/*.whl  installed only where the machine's copy is missing or too old (numpy: zarr 3
#                       needs >= 2.0);
# and, only for another Python than 3.12, beside DIR (not in it: it never travels):
#   DIR.machine/*.whl   a stand-in for what the GPU machine has (all of MACHINE_HAS but torch), so that
#                       `gpu_check.sh --dry-run` proves the offline path on a CPU machine whose python3
#                       has none of it.
# Left behind (dint imports them only where used; each absence is one line): deepspeed, trimesh,
# nibabel, SimpleITK, imagecodecs, distributed, rtree, ome-zarr-models.
set -euo pipefail

usage="usage: bash tools/gpu_wheels.sh DIR [--python-version X.Y]"
GPU_PYTHON=3.12
LIMIT_MIB=60

# Installed always. Each line: a package the checks import, or the needs of one above it.
TRAVEL=(
  zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1 PyYAML==6.0.4  # stores
  dask==2026.11.0 cloudpickle==3.1.3 partd==1.4.2 locket==1.0.0 toolz==1.2.0  # dint shard, lazy reads
  tomli-w==1.2.0                                   # a run's config.toml
  packaging==26.4 typing-extensions==4.16.0        # zarr needs packaging >= 22, typing-extensions >= 4.12
)
# Needs under Python < 3.12 only (dask: importlib_metadata; it: zipp, lazy-importer).
TRAVEL_BEFORE_312=(importlib-metadata==10.2.0 zipp==4.1.2 lazy-importer==0.1.0)
FALLBACK=(numpy==2.4.6)
# What the GPU machine's python3 has (besides torch), as the dry run stands it in: the packages
# named in issue 25 and their own needs, at the versions dint is tested with.
MACHINE_HAS=(
  numpy==2.4.6 scipy==1.17.1 pillow==13.0.0 tifffile==2026.3.3 tqdm==4.70.1 psutil==7.2.2
  scikit-image==0.26.0 imageio==2.38.2 lazy-loader==0.6 networkx==3.6.1
  matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.69.1 kiwisolver==1.5.1 pyparsing==3.3.3
  python-dateutil==4.0.0 tzdata==2026.6
  tensorboard==2.21.0 tensorboard-data-server==0.7.2 absl-py==2.5.1 grpcio==1.85.4 markdown==3.11.4
  protobuf==7.36.2 werkzeug==3.1.9 markupsafe==3.0.4 setuptools==84.2.1
  typer==0.29.3 click==8.5.1 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0
  shellingham==1.5.4 annotated-doc==0.0.7 pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.8.0
  typing-inspection==0.4.5
  filelock==4.3.2 sympy==1.14.0 mpmath==1.3.0 jinja2==3.1.6 fsspec==2026.9.0  # torch's own needs
)

dir="" pyver=$GPU_PYTHON
while [ $# -gt 0 ]; do
  case $1 in
    --python-version) pyver=${2:?$usage}; shift 2 ;;
    --python-version=*) pyver=${1#*=}; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    -*) echo "$usage" >&2; exit 2 ;;
    *) [ -z "$dir" ] || { echo "$usage" >&2; exit 2; }; dir=$1; shift ;;
  esac
done
[ -n "$dir" ] || { echo "$usage" >&2; exit 2; }
dir=${dir%/}
[[ $pyver =~ ^3\.[0-9]+$ ]] || { echo "--python-version $pyver: expected 3.N" >&2; exit 2; }
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

travel=("${TRAVEL[@]}")
[ "${pyver#3.}" -ge 12 ] || travel+=("${TRAVEL_BEFORE_312[@]}")

download() {  # download DEST REQUIREMENT...: one wheel each, no dependencies resolved
  local dest=$1; shift
  mkdir -p "$dest"
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest" "$@" 2> >(grep -v "is ignored: it is neither a file" >&2)
}

rm -rf "$dir" "$dir.machine"
download "$dir" "${travel[@]}"
download "$dir/fallback" "${FALLBACK[@]}"
[ "$pyver" = "$GPU_PYTHON" ] || download "$dir.machine" "${MACHINE_HAS[@]}"
# The checks' signals travel too (kodim01 0.7 MB, Pluto 2.2 MB), for a GPU machine without ../shared/data.
for kodak in ${DINT_DATA:-} shared/data ../shared/data; do
  if [ -f "$kodak/images/kodak/kodim01.png" ]; then
    mkdir -p "$dir/data" && cp "$kodak/images/kodak/kodim01.png" "$dir/data/"
    [ -f "$kodak/images/pluto/pluto_4408x4344_gray.jpg" ] && cp "$kodak/images/pluto/pluto_4408x4344_gray.jpg" "$dir/data/"
    break
  fi
done

# Every wheel's own needs (markers read for Python $pyver on x86-64 Linux) are in the folder, or
# on the machine; exactly one version of each package; and what travels fits.
"$python" - "$dir" "$pyver" "$LIMIT_MIB" "${MACHINE_HAS[@]}" <<'EOF'
import re
import sys
import zipfile
from pathlib import Path

from pip._vendor.packaging.markers import Marker
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

folder, pyver, limit, machine = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
groups = {"travel": sorted(folder.glob("*.whl")), "fallback": sorted(folder.glob("fallback/*.whl")),
          "machine": sorted(Path(f"{folder}.machine").glob("*.whl"))}
have, problems = {}, []
for group, wheels in groups.items():
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        if name in have and have[name][0] != version:
            problems.append(f"{wheel}: {name} {version}, and {have[name][0]} in {have[name][1]}: one version each")
        have.setdefault(name, (version, group, wheel))
machine_names = {canonicalize_name(re.split(r"[=<>]", m)[0]) for m in machine} | {"torch"}
for name, (version, group, wheel) in sorted(have.items()):
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not Marker(str(req.marker)).evaluate(env):
            continue  # an extra, or another platform or Python
        need = canonicalize_name(req.name)
        if need in have and have[need][0] in req.specifier:
            continue
        if need in have:
            problems.append(f"{wheel.name} needs {req}; the folder has {need} {have[need][0]}")
        elif need not in machine_names:
            problems.append(f"{wheel.name} needs {req}: neither in the folder nor on the GPU machine")
mib = lambda paths: sum(p.stat().st_size for p in paths) / 2**20  # noqa: E731
travels = groups["travel"] + groups["fallback"] + sorted(folder.glob("data/*"))
for group, wheels in groups.items():
    if wheels:
        where = {"travel": f"{folder}/", "fallback": f"{folder}/fallback/", "machine": f"{folder}.machine/"}
        note = " (the dry run's stand-in for the GPU machine's own)" if group == "machine" else ""
        print(f"{where[group]}: {len(wheels)} wheels, {mib(wheels):.1f} MiB{note}")
print(f"{folder}: {mib(travels):.1f} MiB, what travels to the GPU machine (at most {limit} MiB), for Python {pyver}")
if mib(travels) > limit:
    problems.append(f"{mib(travels):.1f} MiB would travel: over {limit} MiB")
(folder / "PYTHON_VERSION").write_text(pyver + "\n")
for problem in problems:
    print(f"gpu_wheels: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
