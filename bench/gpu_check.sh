#!/usr/bin/env bash
# Everything GPU in one run (about 8 minutes on one H100/H200), results in RESULTS_DIR:
#   1. the CUDA tests (torch TV-L1 on cuda against OpenCV; their CPU twins run in CI),
#   2. a verified GPU build of 320 small videos at 340x256 through Ray flow actors (pair
#      batching across videos), with GPU utilisation sampled by nvidia-smi every 200 ms,
#      compared with the bare estimator rate (bench/gpu_flow.py),
#   3. bench/gpu_flow.py: pairs/s at 340x256 by batch size, dtype, compile and stop check,
#      EPE against OpenCV on the photo-warp set and the stereo pair, CPU cost per pair,
#   4. the loader with and without --gpu-decode (bench/loader_throughput.py, clips/s per process),
#      and two training steps with `flowshard train --gpu-decode`.
# Usage: bash bench/gpu_check.sh [RESULTS_DIR]    or    bash bench/gpu_check.sh --stage
# Needs a CUDA GPU and flowshard's dependencies. A machine without them gets wheels from
# bench/gpu_wheels.sh, cut into pieces under .whl/p*/: `--stage` only copies the pieces that came
# along to /tmp/whl; a normal run joins every piece found (there and under .whl/) and installs
# the wheels into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--stage" ]; then
    mkdir -p /tmp/whl && find .whl -name '*.piece*' -exec cp {} /tmp/whl/ \; && ls -la /tmp/whl && exit 0
fi
results="${1:-gpu_results}"
mkdir -p "$results"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ] || [ -d /tmp/whl ]; then
    mkdir -p /tmp/whl /tmp/wheels
    find .whl -name '*.piece*' -exec cp {} /tmp/whl/ \; 2>/dev/null || true
    for w in $(ls /tmp/whl | sed 's/\.piece[0-9]*$//' | sort -u); do cat /tmp/whl/"$w".piece* > /tmp/wheels/"$w"; done
    find .whl -name '*.whl' -exec cp {} /tmp/wheels/ \; 2>/dev/null || true
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/wheels/*.whl
    export PYTHONPATH="$PWD:/tmp/site" PATH="/tmp/site/bin:$PATH"
fi
py=python3
$py -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" \
    | tee "$results/device.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$results/device.txt" || true
step() { echo "== $1 ($(date +%T))" | tee -a "$results/steps.txt"; }

step "CUDA tests"
$py -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$results/gpu_tests.txt" || true

step "bare estimator rate and EPE (bench/gpu_flow.py)"
$py bench/gpu_flow.py --cpu-costs --repeats 3 --out "$results/gpu_flow.md" 2>&1 | tail -n 60 | tee "$results/gpu_flow.txt"

step "GPU build of 320 videos, GPU utilisation sampled"
$py - "$results" <<'PY'
import sys
from pathlib import Path

from jobs.demo import make_demo_videos

make_demo_videos(Path(sys.argv[1]) / "videos", per_class=80, num_frames=33, size=(340, 256))
PY
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
    > "$results/gpu_util.csv" 2>/dev/null &
smi=$!
$py -m jobs.cli build "$results/videos/list.csv" "$results/ds" --flow tvl1 --flow-backend torch \
    --flow-device cuda --resize none --no-progress 2>&1 | tee "$results/build.txt"
kill "$smi" 2>/dev/null || true
$py -m jobs.cli verify "$results/ds" | tee -a "$results/build.txt"
$py - "$results" <<'PY'
import csv, re, sys
from pathlib import Path

res = Path(sys.argv[1])
rows = [r for r in csv.reader(open(res / "gpu_util.csv")) if len(r) >= 3]
util = [float(r[1]) for r in rows if r[1].strip().replace(".", "").isdigit()]
busy = [u for u in util if u > 0]
# The flow phase: from the first to the last sample with the GPU busy.
first = next((i for i, u in enumerate(util) if u > 0), 0)
last = max((i for i, u in enumerate(util) if u > 0), default=0)
phase = util[first:last + 1] or [0.0]
build = (res / "build.txt").read_text()
rate = re.search(r"\(([\d.]+) pairs/s\)", build)
bare = re.findall(r"\| torch TV-L1 \| cuda\S* \| (\d+) \| fp32 \| off \| every 10 \| ([\d.]+) \|", (res / "gpu_flow.md").read_text())
best = max((float(r) for _, r in bare), default=float("nan"))
line = (f"GPU busy over the flow phase: mean {sum(phase) / len(phase):.1f}% of {len(phase)} samples (200 ms); "
        f"whole run {sum(util) / max(1, len(util)):.1f}%; build {rate.group(1) if rate else '?'} pairs/s "
        f"(start to end, Ray start-up included) vs bare estimator {best:.0f} pairs/s")
print(line)
(res / "gpu_util.txt").write_text(line + "\n")
PY

step "loader with and without --gpu-decode"
$py bench/loader_throughput.py --videos 8 --frames 64 --per-video 6 --repeat 3 --gpu-decode \
    --json "$results/loader.json" 2>&1 | tail -n 20 | tee "$results/loader.txt"
$py -m jobs.cli clips "$results/ds" "$results/clips" --clip-len 10 --per-video 2 2>&1 | tail -n 3 | tee "$results/train.txt" || true
for mode in --no-gpu-decode --gpu-decode; do
    $py -m jobs.cli train "$results/clips" "$results/run$mode" --arch resnet18 --epochs 1 --steps-per-epoch 20 \
        --batch-size 32 --workers 4 --eval-every 0 --device cuda $mode --no-progress 2>&1 | tail -n 3 \
        | tee -a "$results/train.txt" || true
done
step "done"
