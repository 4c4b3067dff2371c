"""Prepare throughput: the single-process path against Beam's DirectRunner and a two-worker Dask cluster, one run.

    python benchmarks/prepare_throughput.py [--clips 12] [--skip-direct]

All prepare the offline demo's clips (made once, before timing) with the demo teacher, one
commit per clip, so the figure is decoding + labelling + writing, not downloading. Prints
clips/s and frames/s and the ratio to the first single-process run, all measured in the same run.

The Dask rows run on a loopback cluster this script starts: `dask scheduler` and two
`dask worker --nworkers 1 --nthreads 1` processes on 127.0.0.1 (time to start them is
printed, not counted). A "cold" run is the first of its kind: it imports TensorFlow (in this
process, or in each fresh worker) and loads the teacher; a "warm" run repeats it, with only
the teacher loaded again. For each run the script watches the commit records appear and
prints the start-up (command start to the first commit) and the labelling rate after it,
per worker: the figures to extrapolate from to more workers or machines.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from audionet_tf.core import config as cfg  # noqa: E402
from audionet_tf.preparation import runner  # noqa: E402
from audionet_tf.preparation.demo_clips import make_demo_clips  # noqa: E402

WORKERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(folder: str) -> tuple[str, list[subprocess.Popen]]:
    """A scheduler and WORKERS single-threaded workers on 127.0.0.1, as a user would start them."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    address = f"tcp://127.0.0.1:{free_port()}"
    log = open(os.path.join(folder, "cluster.log"), "w")
    processes = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
                                   address.rsplit(":", 1)[1], "--no-dashboard"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)]
    for number in range(WORKERS):
        processes.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nworkers", "1",
                                           "--nthreads", "1", "--no-nanny", "--no-dashboard", "--local-directory",
                                           os.path.join(folder, f"worker-{number}")], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    return address, processes


class CommitWatch:
    """When each commit record of an output appeared, and how many clips it committed."""

    def __init__(self, out: str):
        self.folder = os.path.join(out, "commits")
        self.seen: dict[str, tuple[float, int]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            for name in os.listdir(self.folder) if os.path.isdir(self.folder) else ():
                if name.endswith(".json") and name not in self.seen:
                    try:
                        with open(os.path.join(self.folder, name), encoding="utf-8") as handle:
                            clips = sum(1 for c in json.load(handle)["clips"] if c["status"] == "ok")
                    except (OSError, ValueError):
                        continue
                    self.seen[name] = (time.perf_counter(), clips)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12, help="demo clips (6 s each)")
    parser.add_argument("--skip-direct", action="store_true", help="leave out the DirectRunner row")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        clips = make_demo_clips(os.path.join(tmp, "clips"), args.clips)
        entries = tuple({"url": c.url, "start": 0, "duration": c.duration, "label": c.label} for c in clips)
        frames = int(sum(c.duration for c in clips) * 25)
        started = time.perf_counter()
        address, cluster = start_cluster(tmp)
        try:
            import distributed

            with distributed.Client(address, timeout=60, set_as_default=False) as client:
                client.wait_for_workers(WORKERS, timeout=120)
            cluster_s = time.perf_counter() - started
            # "cold": the first job of its kind (TensorFlow imported, teacher loaded, in this process or in
            # the workers); "warm": the same again, only the teacher loaded again.
            runs = [("single process, cold", None, [])]
            if not args.skip_direct:
                runs.append(("Beam DirectRunner, 2 workers", "DirectRunner",
                             ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]))
            dask = ["--dask_client_address", address]
            runs += [(f"Dask, {WORKERS} workers, cold", "DaskRunner", dask), ("single process, warm", None, []),
                     (f"Dask, {WORKERS} workers, warm", "DaskRunner", dask)]
            timings, watched = {}, {}
            for number, (name, engine, extra) in enumerate(runs):
                out = os.path.join(tmp, f"out-{number}")
                config = cfg.PipelineConfig(prepare=cfg.PrepareConfig(
                    out=out, cache_dir=os.path.join(tmp, "cache"), teacher="demo-colour", clips=entries,
                    holdout="0.2", runner=engine, shard_clips=1))  # one commit per clip: each one timed
                start = time.perf_counter()
                with CommitWatch(out) as watch:
                    if engine:
                        from audionet_tf.preparation.beam import run_beam

                        run_beam(config, extra)
                    else:
                        runner.prepare(config)
                timings[name] = time.perf_counter() - start
                watched[name] = (start, sorted(watch.seen.values()))
        finally:
            for process in cluster:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    base = timings["single process, cold"]
    print(f"{len(clips)} clips, {frames} frames (demo teacher), {os.cpu_count()} cores; "
          f"the loopback Dask cluster took {cluster_s:.1f} s to start (not counted)")
    print(f"{'path':30s} {'clips/s':>8s} {'frames/s':>9s} {'ratio':>6s}")
    for name, seconds in timings.items():
        print(f"{name:30s} {len(clips) / seconds:8.2f} {frames / seconds:9.0f} {base / seconds:5.2f}x")
    print("start-up (command start to first commit) and labelling rate after it:")
    for name, (start, seen) in watched.items():
        if len(seen) < 2:
            continue
        first, last = seen[0][0], seen[-1][0]
        after = sum(n for _, n in seen[1:])
        workers = 1 if name.startswith("single") else WORKERS
        rate = after / max(last - first, 1e-9)
        print(f"  {name:30s} start-up {first - start:5.1f} s; then {rate:5.2f} clips/s, "
              f"{rate / workers:5.2f} per worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
