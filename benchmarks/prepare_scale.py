"""Preparation at scale: thousands of short local clips with the demo teacher, a resume, a 200,000-clip description.

    python benchmarks/prepare_scale.py [--clips 2000] [--sources 25]

1. Makes `--sources` 100 s local videos once (cached in benchmarks/out/scale/), and a list
   of `--clips` one-second clips cut from them (the demo's colours, so the demo teacher
   labels them).
2. Runs `python -m audionet_tf.prepare` on the list in a child process and watches it from
   outside: committed clips (from the commit records) and the child's resident memory,
   reporting the peak memory up to 500, 1,000, ... clips, and clips/s.
3. Runs the same command again on the finished dataset (nothing to do): its wall time,
   and the time the resume decision itself takes (list, keys, `commits.plan`), in-process.
4. Writes a synthetic finished dataset description of 200,000 clips (header + index, no
   shards) and times `catalog.read_description` on it in a fresh process (peak memory too).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
COLOURS = ("red", "green", "blue", "yellow", "white", "black")


def make_sources(folder: str, count: int) -> list[str]:
    """`count` 100 s videos of plain colours with a tone (made once)."""
    from audionet_tf.preparation.media import ffmpeg_exe

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        colour = COLOURS[i % len(COLOURS)]
        path = os.path.join(folder, f"source-{i:03d}-{colour}.mp4")
        if not os.path.isfile(path):
            subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                            f"color=c={colour}:size=32x24:rate=25:duration=100", "-f", "lavfi", "-i",
                            f"sine=frequency={200 + 40 * i}:sample_rate=16000:duration=100", "-c:v", "libx264",
                            "-pix_fmt", "yuv420p", "-g", "25", "-c:a", "aac", "-t", "100", path + ".tmp.mp4"],
                           check=True)
            os.replace(path + ".tmp.mp4", path)
        paths.append(path)
    return paths


def committed(out: str) -> int:
    """Clips committed so far, from the commit records (as a reader would count them)."""
    folder = os.path.join(out, "commits")
    total = 0
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                total += sum(1 for c in json.load(handle)["clips"] if c["status"] == "ok")
        except (OSError, ValueError, KeyError):
            pass
    return total


def rss_mb(pid: int) -> float:
    """A process's resident memory now."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        return 0.0


def synthetic_description(directory: str, clips: int = 200000, per_commit: int = 16) -> None:
    """A finished dataset's header and index for `clips` VGGSound-like clips (no shards)."""
    from audionet_tf.dataset import commits, records

    shutil.rmtree(directory, ignore_errors=True)
    spec = records.DatasetSpec(num_classes=1000, teacher="EfficientNetV2B0")
    commits.write_header(directory, spec, None, {"settings": {"teacher": "EfficientNetV2B0"}})
    os.makedirs(os.path.join(directory, "commits"))
    accepted = []
    for g in range(clips // per_commit):
        docs = [{"id": f"v{g:06d}x{k:02d}_30000_10000", "url": f"https://www.youtube.com/watch?v=v{g:06d}x{k:02d}",
                 "start": 30.0, "duration": 10.0, "label": "waterfall burbling", "source": "youtube",
                 "video_id": f"v{g:06d}x{k:02d}", "row": g * per_commit + k, "split": "train",
                 "key": "0123456789abcdef", "status": "ok", "error": None, "examples": 250}
                for k in range(per_commit)]
        name = f"c-20260101T000000000000-bench-{g:05d}.json"
        open(os.path.join(directory, "commits", name), "w").close()
        accepted.append((name, {"format": commits.RECORD_FORMAT, "writer": "bench", "clips": docs, "shards": [
            {"file": f"train-bench-{g:05d}.tfrecord", "split": "train", "examples": 250 * per_commit,
             "sha256": "0" * 64, "bytes": 250 * per_commit * 1400}]}))
    commits.write_index(directory, commits.State(header=None, accepted=accepted),
                        {"listed": clips, "ok": clips, "failed": 0})


LOAD = ("import sys, time\nstart = time.perf_counter()\nfrom audionet_tf.dataset import catalog\n"
        "d = catalog.read_description(sys.argv[1])\nseconds = time.perf_counter() - start\n"
        "peak = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024\n"
        "print(len(d.clips), seconds, peak)\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--sources", type=int, default=25)  # 99 one-second starts each
    parser.add_argument("--work", default=os.path.join(HERE, "out", "scale"))
    args = parser.parse_args(argv)
    sources = make_sources(os.path.join(args.work, "sources"), args.sources)
    manifest = os.path.join(args.work, f"clips-{args.clips}.csv")
    with open(manifest, "w", encoding="utf-8") as handle:
        handle.write("url,start,duration,label\n")
        for i in range(args.clips):
            source = sources[i % len(sources)]
            handle.write(f"{source},{(i // len(sources)) % 99},1,{source.rsplit('-', 1)[1][:-4]}\n")
    out = os.path.join(args.work, f"data-{args.clips}")
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "audionet_tf.prepare", "--manifest", manifest, "--teacher", "demo-colour",
               "--out", out, "--cache-dir", os.path.join(args.work, "cache"), "--holdout", "0.1"]

    started = time.perf_counter()
    log_path = os.path.join(args.work, f"prepare-{args.clips}.log")  # a file: a full pipe would stall the child
    log_file = open(log_path, "w", encoding="utf-8")
    child = subprocess.Popen(command, env=ENV, stdout=log_file, stderr=subprocess.STDOUT)
    marks = [m for m in (500, 1000, 2000, 5000, 10000) if m <= args.clips]
    peak, at_mark, first_commit = 0.0, {}, None
    while child.poll() is None:
        peak = max(peak, rss_mb(child.pid))
        done = committed(out)
        if done and first_commit is None:
            first_commit = (time.perf_counter() - started, done)
        for mark in marks:
            if done >= mark and mark not in at_mark:
                at_mark[mark] = (peak, time.perf_counter() - started)
        time.sleep(0.2)
    total = time.perf_counter() - started
    log_file.close()
    if child.returncode:
        print(open(log_path, encoding="utf-8").read()[-3000:])
        return 1
    for mark in marks:
        at_mark.setdefault(mark, (peak, total))

    started = time.perf_counter()
    again = subprocess.run(command, env=ENV, capture_output=True, text=True)
    resume_wall = time.perf_counter() - started
    from audionet_tf.commands import prepare as prepare_command
    from audionet_tf.dataset import commits, split
    from audionet_tf.preparation import labelling

    config = prepare_command.resolve_config(prepare_command.build_parser().parse_args(command[3:]))
    started = time.perf_counter()
    clips = labelling.list_clips(config)
    held = split.holdout_ids(clips, config.prepare.holdout)
    keys = {c.id: labelling.clip_key(c, config, c.id in held) for c in clips}
    done = commits.plan(out, keys)
    decide = time.perf_counter() - started
    assert len(done) == args.clips and "written now: 0 clips" in again.stdout, again.stdout[-500:]

    synthetic = os.path.join(args.work, "synthetic-200000")
    synthetic_description(synthetic)
    load = subprocess.run([sys.executable, "-c", LOAD, synthetic], env=ENV, capture_output=True, text=True, check=True)
    count, load_s, load_mb = load.stdout.split()

    labelling_s = total - (first_commit[0] if first_commit else 0.0)
    print(f"{args.clips} one-second local clips (25 frames each), demo teacher, {os.cpu_count()} cores")
    print(f"whole command: {total:.0f} s, {args.clips / total:.1f} clips/s "
          f"(after the first commit, TensorFlow and the teacher loaded: "
          f"{(args.clips - first_commit[1]) / max(labelling_s, 1e-9):.1f} clips/s)")
    print("peak resident memory of the prepare process:")
    for mark in marks:
        print(f"  up to {mark:6d} clips committed: {at_mark[mark][0]:6.0f} MB (at {at_mark[mark][1]:.0f} s)")
    print(f"resume of the finished dataset: {resume_wall:.1f} s for the whole command, "
          f"{decide:.2f} s of it to decide there is nothing to do")
    print(f"synthetic description of {int(count)} clips: read_description {float(load_s):.2f} s, "
          f"peak memory {float(load_mb):.0f} MB (fresh process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
