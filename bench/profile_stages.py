"""Where a build's CPU goes, stage by stage, per frame pair and per resolution.

    PYTHONPATH=. python bench/profile_stages.py [--frames 60] [--chunk 64]

On the mixed-resolution photo videos of `bench/media.py` (176x144 MPEG-4 ... 1280x720 H.264),
each stage of the dense build path is timed alone, in CPU milliseconds per frame pair (one
frame and one field are stored per pair), single-threaded, the way a Ray worker runs it:

- probe/plan: reading the header (ffmpeg's banner), per video, divided by its pairs;
- decode: ffmpeg's own CPU (its process, one decoder thread) and this process's share
  (reading the pipe into numpy, parsing the showinfo timestamps);
- grey: the flow input (a colour conversion before; the luma plane, a view, now);
- transfer: a 64-frame chunk of what flow takes, put into Ray's object store and read in
  another worker (serialisation, copy, deserialisation), per frame;
- flow (Farneback and DIS, OpenCV defaults), quantization and the field's JPEG;
- the frame's JPEG;
- tar assembly: the video's members written into a shard (sha256, headers, fsync).

"before" is the previous path (RGB decode with exact-rounding scaler flags, RGB -> grey and
RGB -> BGR conversions, OpenCV's JPEG of the RGB frame, quantize then restack the planes),
"now" the current one. Ray's start-up is timed once: a fresh local instance, and connecting
to a running one (as a build with `--address` does to the instance `ray start --head` runs).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import media  # noqa: E402
from pipeline import decode, encode, shard  # noqa: E402
from pipeline.decode import DecodeConfig  # noqa: E402
from pipeline.flow.config import FlowConfig  # noqa: E402
from pipeline.flow.estimators import make_estimator  # noqa: E402
from pipeline.flow.quantize import quantize  # noqa: E402


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cpu_ms(fn, items) -> float:
    """CPU ms per item of fn over items (best of 3 passes: the least disturbed by other jobs)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for x in items:
            fn(x)
        best = min(best, (time.process_time() - t0) / len(items) * 1000)
    return best


def decode_ms(path: str, planes: bool) -> tuple[float, float, list]:
    """(ffmpeg CPU ms per frame, this process's ms per frame, frames), best of 3."""
    best = None
    cfg = DecodeConfig(resize="none", threads=1)
    for _ in range(3):
        c0, t0 = child_cpu(), time.process_time()
        frames = [f for f, _ in (decode.iter_planes if planes else decode.iter_frames)(path, cfg)]
        n = len(frames)
        r = ((child_cpu() - c0) / n * 1000, (time.process_time() - t0) / n * 1000)
        best = r if best is None or sum(r) < sum(best) else best
    return best[0], best[1], frames


def probe_ms(path: str) -> float:
    c0, t0 = child_cpu(), time.process_time()
    for _ in range(3):
        decode.probe(path)
    return ((child_cpu() - c0) + (time.process_time() - t0)) / 3 * 1000


def transfer_ms(chunks: dict[str, np.ndarray]) -> dict[str, float]:
    """Per frame: put a chunk into the object store here, get it in another worker."""
    import ray

    @ray.remote
    def reader(ref_list):
        t0 = time.process_time()
        arr = ray.get(ref_list[0])
        int(arr[::7, ::7].sum())  # touch it
        return time.process_time() - t0

    out = {}
    for name, chunk in chunks.items():
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            ref = ray.put(chunk)
            put = time.process_time() - t0
            best = min(best, (put + ray.get(reader.remote([ref]))) / len(chunk) * 1000)
            del ref
        out[name] = best
    return out


def tar_ms(frames_jpeg: list[bytes], fields_jpeg: list[bytes], tmp: Path) -> float:
    sample = {"__key__": "v", "json": b"{}"}
    sample.update({encode.rgb_member(i): b for i, b in enumerate(frames_jpeg)})
    sample.update({encode.flow_member(i): b for i, b in enumerate(fields_jpeg)})
    t0 = time.process_time()
    shard.write_shard([sample], tmp / "t.tar")
    return (time.process_time() - t0) / len(fields_jpeg) * 1000


def ray_startup() -> tuple[float, float]:
    """Seconds to a first task: starting a fresh local Ray; connecting to a running one."""
    import ray

    from ray_instance import running_ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.get(ray.remote(lambda: 1).remote())
    fresh = time.perf_counter() - t0
    ray.shutdown()
    with running_ray(2) as address:
        t0 = time.perf_counter()
        ray.init(address=address, log_to_driver=False)
        ray.get(ray.remote(lambda: 1).remote())
        reuse = time.perf_counter() - t0
        ray.shutdown()
    return fresh, reuse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=12, help="pairs timed per flow estimator")
    ap.add_argument("--no-ray", action="store_true", help="skip the object-store and start-up rows")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    tmp = Path(tempfile.mkdtemp(prefix="fs-profile-"))
    paths = media.write_mixed(tmp / "videos", args.frames)
    est = {a: make_estimator(FlowConfig(algorithm=a)) for a in ("farneback", "dis")}
    rows: dict[str, dict[str, float]] = {}
    chunks: dict[str, np.ndarray] = {}
    for path in paths:
        info = decode.probe(str(path))
        res = f"{info.width}x{info.height}"
        r = rows.setdefault(res, {})
        r["probe (per video / pairs)"] = probe_ms(str(path)) / (args.frames - 1)
        r["ffmpeg before"], r["pipe before"], rgb = decode_ms(str(path), planes=False)
        r["ffmpeg now"], r["pipe now"], planes = decode_ms(str(path), planes=True)
        r["grey before"] = cpu_ms(lambda f: cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), rgb)
        r["grey now"] = cpu_ms(lambda f: decode.split_planes(f)[0], planes)
        greys = [decode.split_planes(f)[0] for f in planes]
        chunks[f"{res} before"] = np.stack(rgb[:args.chunk])
        chunks[f"{res} now"] = np.stack(greys[:args.chunk])
        k = min(args.pairs, len(greys) - 1)
        pairs = [(greys[i][None], greys[i + 1][None]) for i in range(k)]
        for algo, e in est.items():
            r[f"flow {algo}"] = cpu_ms(lambda p: e(*p), pairs)
        flows = [est["farneback"](*p)[0] for p in pairs]
        r["field before"] = cpu_ms(lambda f: encode.encode_flow_q(quantize(f, 20.0), 95), flows)
        r["field now"] = cpu_ms(lambda f: encode.encode_flow(f, 20.0, 95), flows)
        r["frame jpeg before"] = cpu_ms(lambda f: encode.encode_rgb(f, 90), rgb)
        r["frame jpeg now"] = cpu_ms(lambda f: encode.encode_planes(*decode.split_planes(f), 90), planes)
        frames_jpeg = [encode.encode_planes(*decode.split_planes(f), 90) for f in planes]
        fields_jpeg = [encode.encode_flow(flows[i % len(flows)], 20.0, 95) for i in range(len(planes) - 1)]
        r["tar"] = min(tar_ms(frames_jpeg, fields_jpeg, tmp) for _ in range(3))
    startup = None
    if not args.no_ray:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        moved = transfer_ms(chunks)
        ray.shutdown()
        for name, ms in moved.items():
            res, when = name.split()
            rows[res][f"transfer {when}"] = ms
        startup = ray_startup()
    shutil.rmtree(tmp)
    report(rows, startup, args)


def report(rows: dict, startup, args) -> None:
    sizes = list(rows)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{args.frames} frames per video; CPU ms per frame pair, best of 3")
    print("| stage | " + " | ".join(f"{s} before | {s} now" for s in sizes) + " |")
    print("|---|" + "---:|---:|" * len(sizes))
    stages = [("probe/plan", "probe (per video / pairs)", "probe (per video / pairs)"),
              ("ffmpeg decode (its process)", "ffmpeg before", "ffmpeg now"),
              ("pipe -> numpy, timestamps", "pipe before", "pipe now"),
              ("grey (flow input)", "grey before", "grey now"),
              ("object store, chunk -> flow task", "transfer before", "transfer now"),
              ("frame JPEG", "frame jpeg before", "frame jpeg now"),
              ("quantize + field JPEG", "field before", "field now"),
              ("tar assembly", "tar", "tar")]
    totals = {s: [0.0, 0.0] for s in sizes}
    for label, before, now in stages:
        cells = []
        for s in sizes:
            b, n = rows[s].get(before), rows[s].get(now)
            totals[s][0] += b or 0
            totals[s][1] += n or 0
            cells.append(f"{b:.3f} | {n:.3f}" if b is not None else "- | -")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("| **all but flow** | " + " | ".join(f"**{b:.2f}** | **{n:.2f}**" for b, n in totals.values()) + " |")
    for algo in ("farneback", "dis"):
        print(f"| flow {algo} | " + " | ".join(f"{rows[s][f'flow {algo}']:.1f} | {rows[s][f'flow {algo}']:.1f}"
                                               for s in sizes) + " |")
    for algo in ("farneback", "dis"):
        print(f"| all but flow / {algo} | " + " | ".join(
            f"{totals[s][0] / rows[s][f'flow {algo}']:.0%} | {totals[s][1] / rows[s][f'flow {algo}']:.0%}"
            for s in sizes) + " |")
    if startup:
        print(f"\nRay start-up to a first task: fresh local instance {startup[0]:.1f} s; "
              f"connecting to a running one (`--address`) {startup[1]:.1f} s")


if __name__ == "__main__":
    main()
