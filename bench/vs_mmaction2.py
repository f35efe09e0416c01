"""flowshard against mmaction2's flow script, side by side on the same videos.

    PYTHONPATH=. python bench/vs_mmaction2.py --mmaction2-script PATH/tools/misc/flow_extraction.py [--size 340x256 --videos 8]

mmaction2's `tools/misc/flow_extraction.py` (written against open-mmlab/mmaction2 at commit
4d6c93474730cad2f25e51109adcf96824efc7a3, the script's blob b8763430b52ba9983cd5fea2ff6b4ecb4605bb7c;
get it from that repository, it is not part of this one) is run as its README says, on a list
of videos: `--method farneback --save-rgb`, one process that decodes each video with OpenCV,
computes Farneback flow for every pair and writes every frame and both flow components as
JPEGs. flowshard builds the same videos at their native sizes (`--flow farneback --resize none`):
decode, flow, JPEG frames and fields, tar shards, manifests. Both run on the same generated
mixed-resolution photo videos (`bench/media.py`, 176x144 MPEG-4 to 1280x720 H.264), one after
the other in each repeat, so a change in the machine's load hits both; the ratio is
mmaction2's wall time over flowshard's, the median of the repeats.

flowshard is timed two ways: the CLI as a user runs it (a fresh local Ray started by the
build, start-up included), and the same CLI with `--address` reusing a Ray that already runs
on this machine (what `ray start --head` then `--address auto` gives a user; here the
benchmark starts its own instance for it, see `bench/ray_instance.py`).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import media  # noqa: E402
from ray_instance import running_ray  # noqa: E402

MMACTION2_COMMIT = "4d6c93474730cad2f25e51109adcf96824efc7a3"
MMACTION2_BLOB = "b8763430b52ba9983cd5fea2ff6b4ecb4605bb7c"  # git blob id of the script at that commit
REPO = Path(__file__).resolve().parent.parent


def git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and the children it waited for) of one run
    (Ray's processes are not waited for by the CLI, so for flowshard only its driver counts)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def run_mmaction2(script: Path, root: Path, videos: list[Path], dest: Path) -> tuple[float, float]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    listing = dest.parent / "videos.txt"
    listing.write_text("".join(f"{p.relative_to(root)}\n" for p in videos))
    cmd = [sys.executable, str(script), "--input", str(listing), "--prefix", str(root), "--dest", str(dest),
           "--method", "farneback", "--save-rgb"]
    return timed(cmd)


def run_flowshard(root: Path, out: Path, address: str | None, cpus: int | None) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "jobs.cli", "--log-level", "WARNING", "build", str(root), str(out),
           "--flow", "farneback", "--resize", "none", "--no-progress"]
    cmd += ["--address", address] if address else (["--num-cpus", str(cpus)] if cpus else [])
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    return timed(cmd, env)


def count_files(dest: Path) -> tuple[int, int]:
    files = [p.name for p in dest.rglob("*.jpg")]
    return sum(n.startswith("img_") for n in files), sum(n.startswith("x_") for n in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mmaction2-script", required=True, type=Path,
                    help="tools/misc/flow_extraction.py of mmaction2 (see the pinned commit above)")
    ap.add_argument("--copies", type=int, default=1, help="videos of each of the 4 sizes")
    ap.add_argument("--size", default=None, help="WxH: --videos photo videos of this one size (e.g. 340x256, "
                    "the size UCF101 and Kinetics pipelines resize to) instead of the 4 mixed sizes")
    ap.add_argument("--videos", type=int, default=8, help="videos of --size")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of flowshard's local Ray (default: all)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    script = args.mmaction2_script.resolve()
    if not script.is_file():
        raise SystemExit(f"{script}: no such file (mmaction2's tools/misc/flow_extraction.py)")
    blob = git_blob_id(script)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fs-vs-mma-"))
    root = work / "videos"
    if args.size:
        size = tuple(int(x) for x in args.size.lower().split("x"))
        videos = media.write_sized(root, args.frames, args.videos, (size[0], size[1]))
    else:
        videos = media.write_mixed(root, args.frames, copies=args.copies)
    cpus = args.num_cpus or os.cpu_count()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{len(videos)} videos ({', '.join(sorted({p.parent.name for p in videos}, key=lambda s: int(s.split('x')[0])))}) "
          f"x {args.frames} frames; mmaction2 script blob {blob[:12]}"
          + ("" if blob == MMACTION2_BLOB else f" (NOT the pinned {MMACTION2_BLOB[:12]})"))
    rows = []
    with running_ray(cpus) as address:
        for r in range(args.repeat):
            for d in ("mma", "fs", "fs_reuse"):
                shutil.rmtree(work / d, ignore_errors=True)
            mma = run_mmaction2(script, root, videos, work / "mma" / "out")
            fs = run_flowshard(root, work / "fs", None, cpus)
            fs_reuse = run_flowshard(root, work / "fs_reuse", address, None)
            rows.append((mma, fs, fs_reuse))
            print(f"run {r + 1}: mmaction2 {mma[0]:.1f} s (CPU {mma[1]:.1f} s), flowshard {fs[0]:.1f} s, "
                  f"flowshard reusing Ray {fs_reuse[0]:.1f} s", flush=True)
    frames, fields = count_files(work / "mma" / "out")
    print(f"\nmmaction2 wrote {frames} frames and {fields} x/y field pairs per run\n")
    print("| run | wall s (median) | CPU s (median) | mmaction2 wall / this wall |\n|---|---:|---:|---:|")
    print(f"| mmaction2 flow_extraction.py, farneback, --save-rgb | {statistics.median(m[0] for m, _, _ in rows):.1f} "
          f"| {statistics.median(m[1] for m, _, _ in rows):.1f} | 1.00x |")
    print(f"| flowshard build, fresh local Ray (start-up included) | {statistics.median(f[0] for _, f, _ in rows):.1f} "
          f"| (in the Ray processes) "
          f"| **{statistics.median(m[0] / f[0] for m, f, _ in rows):.2f}x** |")
    print(f"| flowshard build --address (a running Ray reused) | {statistics.median(g[0] for _, _, g in rows):.1f} "
          f"| (in the Ray processes) | **{statistics.median(m[0] / g[0] for m, _, g in rows):.2f}x** |")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
