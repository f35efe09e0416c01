#!/usr/bin/env bash
# Download the cp312 wheels that a GPU machine with Python 3.12, torch and torchvision (and the
# usual scientific stack: numpy, OpenCV without its contrib modules, pyarrow, click, PyYAML,
# scikit-image, ...) lacks to run bench/gpu_check.sh, into .whl/ (git-ignored here). gpu_check.sh
# installs them into /tmp/site when .whl/ exists. Run where pip can reach the package index.
# Usage: bash bench/gpu_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.whl}"
mkdir -p "$dir"
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx "/$dir/" "$exclude" 2>/dev/null || echo "/$dir/" >> "$exclude"
# ray and its core needs missing there (jsonschema's family); webdataset; ffmpeg-python; an ffmpeg
# binary (imageio-ffmpeg); OpenCV with the contrib modules (cv2.optflow's TV-L1, the EPE reference).
wheels=(
    ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
    webdataset==1.0.2 braceexpand==0.1.7 ffmpeg-python==0.2.0 future==1.0.0 imageio-ffmpeg==0.8.1
    opencv-contrib-python-headless==5.1.0.95
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dir" "${wheels[@]}"
du -ch "$dir"/*.whl | tail -n 1
# A device call carries at most 64 MiB, and ray, OpenCV-contrib and imageio-ffmpeg are each
# larger: cut every wheel into pieces of at most 60 MiB and pack the pieces into folders
# $dir/p1, $dir/p2, ... of at most 60 MiB each. Carry them one call after another while the
# machine stays warm, each with `bash bench/gpu_check.sh --stage` (copies them to /tmp/whl);
# the last call runs `bash bench/gpu_check.sh`, which joins the pieces and installs them.
limit=$((60 * 1024 * 1024))
rm -rf "$dir"/p[0-9]*
(cd "$dir" && for w in *.whl; do split -b "$limit" -d -a 2 "$w" "$w.piece"; rm "$w"; done)
part=1 used=0
for f in $(ls -S "$dir"/*.piece*); do
    size=$(stat -c %s "$f")
    if [ $((used + size)) -gt "$limit" ]; then part=$((part + 1)) used=0; fi
    mkdir -p "$dir/p$part"
    mv "$f" "$dir/p$part/"
    used=$((used + size))
done
du -sh "$dir"/p*
echo "$part call(s): carry $dir/p1 ... $dir/p$part, one per call (see above)"
