#!/usr/bin/env bash
# GPU checks and timings in one run (about 5 minutes on one H100):
#   1. the CUDA tests (torch TV-L1 on cuda against OpenCV, RAFT wiring),
#   2. an end-to-end `flowshard build --flow tvl1 --flow-backend torch --flow-device cuda`
#      on generated videos, verified,
#   3. bench/gpu_flow.py: pairs/s at 340x256 over batch sizes, against OpenCV on one core,
#      and the EPE table, written to RESULTS/gpu_flow.md.
# Usage: bash bench/gpu_check.sh [RESULTS_DIR]   (needs flowshard installed, a CUDA GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
results="${1:-gpu_results}"
mkdir -p "$results"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PYTHONUNBUFFERED=1
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" \
    | tee "$results/device.txt"

python -m pytest -q -m gpu tests/test_flow_torch.py 2>&1 | tee "$results/gpu_tests.txt"

python - "$results" <<'PY'
import sys
from pathlib import Path

from jobs.demo import make_demo_videos

make_demo_videos(Path(sys.argv[1]) / "videos", per_class=8, num_frames=64, size=(340, 256))
PY
python -m jobs.cli build "$results/videos/list.csv" "$results/ds" --flow tvl1 --flow-backend torch \
    --flow-device cuda --resize none --batch-size 64 --no-progress 2>&1 | tee "$results/build.txt"
python -m jobs.cli verify "$results/ds" | tee -a "$results/build.txt"

python bench/gpu_flow.py --out "$results/gpu_flow.md" 2>&1 | tee "$results/gpu_flow.txt"
