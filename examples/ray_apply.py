#!/usr/bin/env python3
"""Run `reggan apply` on a folder of recordings across a Ray cluster.

One Ray task per file: each task runs the same `reggan apply FILE -o OUT --resume ...`
a user would run by hand, on whichever node has a free CPU. Because `apply` writes under
a temporary name and renames at the end, and `--resume` skips finished outputs, a task
that dies (node lost, out of memory) is simply run again (`--retries`), and re-running
the whole driver after an interruption redoes only the unfinished files.

Every node needs the same paths: reggan installed (scripts/install.sh) or the same build
tree, and the input and output folders on a shared file system (NFS, a cluster volume).

    pip install ray
    ray start --head                                   # on the first machine
    ray start --address HEAD:6379                      # on every other machine
    python3 examples/ray_apply.py recordings/ out/ --address auto -- -e happy

Prints one line per finished file and, at the end, files and video frames per wall
second and how many tasks ran side by side on average (sum of task times / wall time).
For the speed-up, time `reggan apply IN -o OUT` on one machine against it.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

MEDIA = {
    # Keep in step with IMAGE_EXTENSIONS / VIDEO_EXTENSIONS in cli/src/apply.rs.
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp",
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".ogv",
    ".flv", ".wmv",
}
VIDEO = MEDIA - {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_inputs(root: Path):
    """Images and videos below root, in name order, skipping dot-files (as apply does)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in MEDIA:
                files.append(Path(dirpath, name).relative_to(root))
    return files


def output_for(out_root: Path, relative: Path) -> Path:
    """Where `reggan apply DIR -o OUT` would write this file: videos become .mp4."""
    if relative.suffix.lower() in VIDEO:
        relative = relative.with_suffix(".mp4")
    return out_root / relative


def find_reggan(given):
    if given:
        return str(Path(given).resolve())
    found = shutil.which("reggan")
    if found:
        return found
    built = Path(__file__).resolve().parent.parent / "target/release/reggan"
    if built.is_file():
        return str(built)
    sys.exit("reggan not found: install it (scripts/install.sh) or give --reggan PATH")


def apply_file(reggan, source, target, extra):
    """The task body: one `reggan apply`, its own wall time, and its report line."""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    run = subprocess.run(
        [reggan, "apply", source, "-o", target, "--resume", *extra],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        # Raising makes Ray retry the task (retry_exceptions); the message reaches the
        # driver when the retries are used up.
        raise RuntimeError(f"{source}: {run.stderr.strip()}")
    return {
        "source": source,
        "seconds": time.monotonic() - start,
        "line": run.stdout.strip().splitlines()[-1] if run.stdout.strip() else "",
        "node": os.uname().nodename,
        "pid": os.getpid(),
    }


def frames_in(line):
    """Video frames in apply's report line ('... N frames in S s ...'), 0 for images."""
    m = re.search(r"(\d+) frames in", line)
    return int(m.group(1)) if m else 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to `reggan apply` (e.g. -- -e happy --threads 1).",
    )
    parser.add_argument("input", type=Path, help="folder of images and videos (recursive)")
    parser.add_argument("output", type=Path, help="output folder (the tree is kept)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address ('auto' for the one `ray start` made); "
                             "default: a Ray instance on this machine")
    parser.add_argument("--local-workers", type=int, default=0, metavar="N",
                        help="start a Ray cluster of N single-CPU nodes on this machine for "
                             "the run and stop it afterwards (trying it out, tests)")
    parser.add_argument("--reggan", default=None, help="the reggan binary (default: on PATH, "
                        "else this tree's target/release/reggan); same path on every node")
    parser.add_argument("--cpus-per-file", type=float, default=1.0,
                        help="CPUs Ray reserves for each file (pass --threads to match)")
    parser.add_argument("--retries", type=int, default=2,
                        help="times a failed file is tried again (default 2)")
    args, extra = parser.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]

    import ray  # only needed here, so --help works without it

    source_root = args.input.resolve()
    if not source_root.is_dir():
        sys.exit(f"{args.input} is not a folder")
    out_root = args.output.resolve()
    files = list_inputs(source_root)
    if not files:
        sys.exit(f"{args.input}: no images or videos")
    reggan = find_reggan(args.reggan)

    cluster = None
    if args.local_workers:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 1, "include_dashboard": False})
        for _ in range(args.local_workers - 1):
            cluster.add_node(num_cpus=1)
        args.address = cluster.address
    try:
        return run(args, extra, files, source_root, out_root, reggan, ray)
    finally:
        if cluster is not None:
            cluster.shutdown()


def run(args, extra, files, source_root, out_root, reggan, ray):
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = ray.cluster_resources().get("CPU", 0)
    print(f"{len(files)} files on {len(nodes)} Ray nodes ({cpus:g} CPUs)", flush=True)

    task = ray.remote(num_cpus=args.cpus_per_file, max_retries=args.retries,
                      retry_exceptions=True)(apply_file)
    start = time.monotonic()
    pending = {
        task.remote(reggan, str(source_root / rel), str(output_for(out_root, rel)), extra): rel
        for rel in files
    }
    results, failed = [], []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        rel = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as e:  # the task's error after its last retry
            failed.append(f"{rel}: {e}")
            print(f"failed: {rel}: {e}", file=sys.stderr, flush=True)
            continue
        results.append(result)
        print(f"[{len(results) + len(failed)}/{len(files)}] {rel} "
              f"({result['seconds']:.1f} s on {result['node']}:{result['pid']})", flush=True)
    wall = time.monotonic() - start
    ray.shutdown()

    busy = sum(r["seconds"] for r in results)
    frames = sum(frames_in(r["line"]) for r in results)
    workers = len({(r["node"], r["pid"]) for r in results})
    print(f"done: {len(results)} files in {wall:.1f} s: {len(results) / wall:.2f} files/s"
          + (f", {frames / wall:.1f} video frames/s" if frames else "")
          + f"; tasks busy {busy:.1f} s in all ({busy / wall:.2f} side by side on "
          f"average, {workers} worker processes)")
    if failed:
        print(f"{len(failed)} files failed after {args.retries} retries:\n  "
              + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
