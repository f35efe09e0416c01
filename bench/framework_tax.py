"""Where a CPU build's CPU goes, per role and per frame pair: the framework tax.

    PYTHONPATH=. python bench/framework_tax.py [--videos 8,64] [--frames 150] [--algos farneback,dis] [--repeat 1]

For each algorithm and video count it builds N synthetic 340x256 H.264 videos of `--frames`
frames (`--resize none`) on an embedded local Ray started as `flowshard build` starts it,
while a separate sampler process reads every process of the machine from /proc every 50 ms
and charges the CPU each one spent since its last reading to its role at that moment:

- driver: this process (the build's driver loop and its threads; Ray's core worker included);
- `ray::_plan`, `ray::_decode`, `ray::_flow`, ... , `ray::UnitAssembler`: Ray workers by the
  task or actor their process title names while they run it; `ray::IDLE` and a worker
  process not yet titled (`default_worker.py`) are "worker start / idle";
- ffmpeg: the CPU of ffmpeg and ffprobe processes, read from their parent worker's
  children-time once reaped (exact, whatever their life time);
- Ray's own processes: raylet, gcs_server, dashboard agent, runtime-env agent, log monitor,
  dashboard, autoscaler monitor;
- other: every other process of the machine (another job would show here: run it idle).

The sum is checked against the machine's busy CPU from /proc/stat. Ray's start-up (init to a
first task result) is measured apart, in seconds and machine CPU, and is not in the build's
figures. Peak PSS per role (proportional set size: shared pages divided among the processes
that map them, so roles add up to the machine's real use) is read every 0.5 s.

Bare flow (the estimator alone on pre-decoded luma frames, one process per core at once) and
the format (ffmpeg decode and pipe, frame JPEG, quantize + field JPEG, tar assembly, probe),
each stage timed alone on one of the same videos, give the target: whole-build CPU per pair
<= bare + format + 1.0 ms. Two video counts separate the per-pair cost from the per-build
one (fixed: per second and per process): cost(N) = fixed + N x per video.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

TICK = os.sysconf("SC_CLK_TCK")
RAY_OWN = {
    "dashboard/agent.py": "dashboard agent",
    "runtime_env/agent/main.py": "runtime-env agent",
    "log_monitor.py": "log monitor",
    "dashboard/dashboard.py": "dashboard",
    "autoscaler/_private/monitor.py": "autoscaler monitor",
}
FFMPEG = ("ffmpeg", "ffprobe")


# ---------------------------------------------------------------- the sampler (its own process)


def role_of(pid: int, cmdline: str, comm: str, driver: int) -> str:
    """The role a process plays at this moment, from its pid, title and command line."""
    if pid == driver:
        return "driver"
    argv = cmdline.split()
    if not argv:
        return "other"
    if argv[0].startswith("ray::"):
        title = argv[0].split(".")[0]
        return {"ray::IDLE": "worker start / idle", "ray::DashboardAgent": "dashboard agent",
                "ray::RuntimeEnvAgent": "runtime-env agent"}.get(title, title)
    base = os.path.basename(argv[0])
    if base in ("raylet", "gcs_server"):  # the raylet's arguments name default_worker.py: exe first
        return base
    if comm in FFMPEG:
        return "ffmpeg (live)"
    script = next((a for a in argv[1:4] if a.endswith(".py")), "")
    if script.endswith("default_worker.py"):
        return "worker start / idle"
    return next((role for needle, role in RAY_OWN.items() if script.endswith(needle)), "other")


def read_proc(pid: str) -> tuple[str, str, float, float] | None:
    """(comm, cmdline, own CPU s, reaped children's CPU s) of a process, or None once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    own = (int(fields[11]) + int(fields[12])) / TICK
    children = (int(fields[13]) + int(fields[14])) / TICK
    return comm, cmdline.strip(), own, children


def pss_kb(pid: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (every process; idle and iowait left out).

    Machine-wide on purpose: Ray's worker processes are not the driver's descendants once Ray
    re-parents them, and workers Ray kills and restarts would escape a per-process count."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


def sample(driver: int, out: str, interval: float = 0.05) -> None:
    """Charge every process's CPU to its role until SIGTERM, then write the totals to `out`."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    me = os.getpid()
    last_own: dict[str, float] = {}
    last_children: dict[str, float] = {}
    cpu: dict[str, float] = {}
    pss_peak: dict[str, dict[str, int]] = {}
    total_pss_peak = 0
    count_peak: dict[str, int] = {}
    pids: dict[str, set[str]] = {}  # role -> every process seen in it
    baseline = {pid: read_proc(pid) for pid in filter(str.isdigit, os.listdir("/proc"))}
    for pid, info in baseline.items():
        if info:
            last_own[pid], last_children[pid] = info[2], info[3]
    m0, t0, next_pss = machine_cpu(), time.perf_counter(), 0.0
    while not stop:
        now = time.perf_counter()
        read_pss = now >= next_pss
        counts: dict[str, int] = {}
        total_pss = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == me:
                continue
            info = read_proc(pid)
            if info is None:
                continue
            comm, cmdline, own, children = info
            role = role_of(int(pid), cmdline, comm, driver)
            cpu[role] = cpu.get(role, 0.0) + own - last_own.get(pid, 0.0)
            last_own[pid] = own
            # Reaped children of the driver and of Ray workers are ffmpeg and ffprobe; the raylet's
            # are worker processes it reaped, already counted while they lived.
            if role == "driver" or role.startswith("ray::") or role == "worker start / idle":
                cpu["ffmpeg"] = cpu.get("ffmpeg", 0.0) + children - last_children.get(pid, 0.0)
            last_children[pid] = children
            if role in ("other", "ffmpeg (live)"):
                continue
            counts[role] = counts.get(role, 0) + 1
            pids.setdefault(role, set()).add(pid)
            if read_pss:
                kb = pss_kb(pid)
                total_pss += kb
                peaks = pss_peak.setdefault(role, {})
                peaks[pid] = max(peaks.get(pid, 0), kb)
        for role, n in counts.items():
            count_peak[role] = max(count_peak.get(role, 0), n)
        if read_pss:
            total_pss_peak = max(total_pss_peak, total_pss)
            next_pss = now + 0.5
        time.sleep(interval)
    cpu.pop("ffmpeg (live)", None)  # counted through the parent once reaped
    result = {
        "cpu": cpu,
        "machine": machine_cpu() - m0,
        "wall": time.perf_counter() - t0,
        "pss_mb": {r: sum(p.values()) / 1024 for r, p in pss_peak.items()},
        "pss_total_peak_mb": total_pss_peak / 1024,
        "processes": count_peak,
        "pids": {r: len(p) for r, p in pids.items()},
        "workers": len(set().union(*(p for r, p in pids.items() if r.startswith("ray::_") or r == "worker start / idle"
                                     or r == "ray::UnitAssembler"), set())),
    }
    Path(out).write_text(json.dumps(result))


class Sampler:
    """The sampler as a child process (its own CPU is left out of every role)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __enter__(self) -> Sampler:
        self.proc = subprocess.Popen([sys.executable, __file__, "--sample", str(self.out), "--driver", str(os.getpid())])
        time.sleep(0.5)  # its baseline read
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

    def result(self) -> dict:
        return json.loads(self.out.read_text())


# ---------------------------------------------------------------- the measured build


# What "before" was: the embedded Ray as builds started it until this benchmark's issue (Ray's
# metrics and task events on, its INFO and token lines in the terminal, 3 x CPUs + 4 workers
# kept) and every video on the split path (plan, decode, flow tasks in separate processes).
VARIANTS = ("before", "now")


def start_ray(num_cpus: int, variant: str) -> None:
    import ray

    from pipeline.cluster.startup import RayConfig, init_ray

    if variant == "now":
        init_ray(RayConfig(num_cpus=num_cpus))
        return
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             _system_config={"num_workers_soft_limit": 3 * num_cpus + 4})


def ray_startup(num_cpus: int, variant: str) -> tuple[float, float]:
    """(seconds, machine CPU seconds) from starting the build's embedded Ray to a first task's result."""
    import ray

    c0, t0 = machine_cpu(), time.perf_counter()
    start_ray(num_cpus, variant)
    ray.get(ray.remote(num_cpus=0)(lambda: 1).remote())
    return time.perf_counter() - t0, machine_cpu() - c0


def measured_build(root: Path, algo: str, num_cpus: int, tmp: Path, variant: str) -> dict:
    """One whole build on a fresh embedded Ray: start-up apart, then the build under the sampler."""
    import ray

    from pipeline.build.config import BuildConfig, ShardConfig
    from pipeline.build.run import build_dataset
    from pipeline.cluster.executor import RayExecutor
    from pipeline.decode import DecodeConfig
    from pipeline.flow.config import FlowConfig
    from pipeline.stages.config import WorkerConfig

    start_s, start_cpu = ray_startup(num_cpus, variant)
    time.sleep(2.0)  # let Ray's start-up work (prestarted workers, agents) settle before measuring
    out = tmp / "out"
    cfg = BuildConfig(
        worker=WorkerConfig(decode=DecodeConfig(resize="none", threads=1), flow=FlowConfig(algorithm=algo)),
        shard=ShardConfig(),
    )
    try:
        with Sampler(tmp / "sample.json") as sampler:
            summary = build_dataset(str(root), str(out), cfg, executor=RayExecutor(fused=variant == "now"),
                                    progress=False)
        result = sampler.result()
    finally:
        ray.shutdown()
        shutil.rmtree(out, ignore_errors=True)
    result.update(pairs=summary.flow_fields, start_s=start_s, start_cpu=start_cpu)
    return result


# ---------------------------------------------------------------- bare flow and the format


def bare_cpu_per_pair(root: Path, algo: str, workers: int) -> float:
    """Machine CPU ms per pair of the estimator alone, `workers` processes at once."""
    from pipeline_throughput import bare_parallel_rate

    return bare_parallel_rate(root, algo, workers)[1]


def format_cpu_per_pair(path: str) -> dict[str, float]:
    """CPU ms per pair of each format stage on one video, timed alone (bench/profile_stages.py)."""
    import cv2

    from pipeline import decode, encode
    from pipeline.flow.config import FlowConfig
    from pipeline.flow.estimators import make_estimator
    from profile_stages import cpu_ms, decode_ms, probe_ms, tar_ms

    cv2.setNumThreads(1)
    ffmpeg, pipe, planes = decode_ms(path, planes=True)
    pairs = len(planes) - 1
    greys = [decode.split_planes(f)[0] for f in planes]
    est = make_estimator(FlowConfig(algorithm="farneback"))
    flows = [est(greys[i][None], greys[i + 1][None])[0] for i in range(min(12, pairs))]
    frames_jpeg = [encode.encode_planes(*decode.split_planes(f), 90) for f in planes]
    fields_jpeg = [encode.encode_flow(flows[i % len(flows)], 20.0, 95) for i in range(pairs)]
    tmp = Path(tempfile.mkdtemp(prefix="fs-format-"))
    try:
        tar = min(tar_ms(frames_jpeg, fields_jpeg, tmp) for _ in range(3))
    finally:
        shutil.rmtree(tmp)
    return {
        "probe": probe_ms(path) / pairs,
        "ffmpeg": ffmpeg,
        "pipe": pipe,
        "frame jpeg": cpu_ms(lambda f: encode.encode_planes(*decode.split_planes(f), 90), planes),
        "quantize + field jpeg": cpu_ms(lambda f: encode.encode_flow(f, 20.0, 95), flows),
        "tar": tar,
    }


# ---------------------------------------------------------------- report


ROLE_ORDER = ["driver", "ray::_plan", "ray::_decode", "ray::_flow", "ray::_chunk", "ray::_encode", "ray::UnitAssembler",
              "worker start / idle", "ffmpeg", "raylet", "gcs_server", "dashboard agent", "runtime-env agent",
              "log monitor", "dashboard", "autoscaler monitor"]
RAY_OWN_ROLES = {"raylet", "gcs_server", *RAY_OWN.values()}


def roles_in(runs: list[dict]) -> list[str]:
    seen = {r for run in runs for r in run["cpu"] if r != "other"}
    return [r for r in ROLE_ORDER if r in seen] + sorted(seen - set(ROLE_ORDER))


def median_cpu(runs: list[dict], role: str) -> float:
    return statistics.median(run["cpu"].get(role, 0.0) for run in runs)


def report(results: dict, bare: dict, fmt: dict[str, float], args) -> None:
    fmt_total = sum(fmt.values())
    print("\nFormat, CPU ms per pair, each stage alone: " + ", ".join(f"{k} {v:.3f}" for k, v in fmt.items())
          + f"; total {fmt_total:.2f}")
    for algo, by_n in results.items():
        counts = sorted(by_n)
        all_runs = [run for runs in by_n.values() for run in runs]
        roles = roles_in(all_runs)
        print(f"\n### {algo}: CPU per role (median of {args.repeat}), ms per pair [CPU s]\n")
        print("| role | " + " | ".join(f"{n} videos" for n in counts) + " | fixed CPU s | per pair ms |")
        print("|---|" + "---:|" * (len(counts) + 2))
        pairs = {n: statistics.median(r["pairs"] for r in by_n[n]) for n in counts}

        def row(label: str, values: dict[int, float]) -> None:
            cells = [f"{values[n] / pairs[n] * 1000:.2f} [{values[n]:.1f}]" for n in counts]
            fixed, per = split_fixed(values, pairs)
            print(f"| {label} | " + " | ".join(cells) + f" | {fixed:.1f} | {per:.2f} |")

        for role in roles:
            row(role, {n: median_cpu(by_n[n], role) for n in counts})
        row("**Ray's own processes**", {n: sum(median_cpu(by_n[n], r) for r in roles if r in RAY_OWN_ROLES)
                                         for n in counts})
        row("**all build roles**", {n: statistics.median(sum(v for r, v in run["cpu"].items() if r != "other")
                                                         for run in by_n[n]) for n in counts})
        row("other processes", {n: median_cpu(by_n[n], "other") for n in counts})
        row("machine (/proc/stat)", {n: statistics.median(r["machine"] for r in by_n[n]) for n in counts})
        for n in counts:
            runs = by_n[n]
            build = statistics.median(sum(v for r, v in run["cpu"].items() if r != "other") for run in runs)
            per_pair = build / pairs[n] * 1000
            wall = statistics.median(r["wall"] for r in runs)
            target = bare[algo.split(",")[0]] + fmt_total + 1.0
            print(f"\n{n} videos, {pairs[n]:.0f} pairs: wall {wall:.1f} s, build CPU {per_pair:.2f} ms/pair; "
                  f"bare flow {bare[algo.split(',')[0]]:.2f} + format {fmt_total:.2f} + 1.0 = {target:.2f} ms/pair target "
                  f"({'met' if per_pair <= target else 'not met'}); machinery (build - bare - format) "
                  f"{per_pair - bare[algo.split(',')[0]] - fmt_total:.2f} ms/pair; Ray start-up "
                  f"{statistics.median(r['start_s'] for r in runs):.1f} s, "
                  f"{statistics.median(r['start_cpu'] for r in runs):.1f} CPU s")
            pss = {role: statistics.median(r["pss_mb"].get(role, 0.0) for r in runs) for role in roles}
            procs = {role: max(r["processes"].get(role, 0) for r in runs) for role in roles}
            print("peak PSS MB per role (processes at once): " + ", ".join(
                f"{role} {mb:.0f} ({procs[role]})" for role, mb in pss.items() if mb)
                + f"; all at once {statistics.median(r['pss_total_peak_mb'] for r in runs):.0f}")
            print(f"worker processes during the build: {statistics.median(r['workers'] for r in runs):.0f} "
                  f"(" + ", ".join(f"{role} {statistics.median(r['pids'].get(role, 0) for r in runs):.0f}"
                                   for role in roles if role.startswith("ray::") or role.startswith("worker")) + ")")


def split_fixed(values: dict[int, float], pairs: dict[int, float]) -> tuple[float, float]:
    """(fixed CPU s, ms per pair) from a line through the smallest and the largest build."""
    lo, hi = min(values), max(values)
    if lo == hi:
        return 0.0, values[lo] / pairs[lo] * 1000
    per = (values[hi] - values[lo]) / (pairs[hi] - pairs[lo])
    return values[lo] - per * pairs[lo], per * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default="8,64", help="video counts to build")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--algos", default="farneback,dis")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=1, help="builds per figure; the median is reported")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="before: the split path and Ray as builds "
                    "started it before; now: as `flowshard build` runs today")
    ap.add_argument("--json", help="write the raw per-run figures here")
    ap.add_argument("--sample", help=argparse.SUPPRESS)
    ap.add_argument("--driver", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sample:
        sample(args.driver, args.sample)
        return
    logging.basicConfig(level=logging.WARNING)
    from pipeline_throughput import make_videos

    tmp = Path(tempfile.mkdtemp(prefix="fs-tax-"))
    counts = [int(n) for n in args.videos.split(",")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"340x256 H.264, {args.frames} frames per video; builds on {args.cpus} CPUs", flush=True)
    roots = {n: make_videos(tmp / f"v{n}", n, args.frames) for n in counts}
    results: dict[str, dict[int, list[dict]]] = {}  # "algo, variant" -> videos -> runs
    bare: dict[str, float] = {}
    variants = args.variants.split(",")
    for algo in args.algos.split(","):
        bare[algo] = bare_cpu_per_pair(roots[counts[0]], algo, args.cpus)
        for _ in range(args.repeat):
            for n in counts:
                for variant in variants:  # alternating, so a change in the machine's load moves both
                    run = measured_build(roots[n], algo, args.cpus, tmp, variant)
                    results.setdefault(f"{algo}, {variant}", {}).setdefault(n, []).append(run)
                    print(f"{algo} {variant} {n} videos: wall {run['wall']:.1f} s, machine CPU {run['machine']:.1f} s, "
                          f"start-up {run['start_s']:.1f} s", flush=True)
    fmt = format_cpu_per_pair(sorted(str(p) for p in roots[counts[0]].glob("*/*.mp4"))[0])
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "bare": bare, "format": fmt}, indent=1))
    report(results, bare, fmt, args)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
