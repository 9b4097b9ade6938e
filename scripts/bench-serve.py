#!/usr/bin/env python3
"""Server throughput (issue 18): a queue of N short jobs through one `osp serve` (the model loaded
once) against the same N jobs as N `osp generate` processes run one by one (each loads the model),
and against one `osp generate --prompts` batch (loaded once, no HTTP) as the floor.

Every run makes the same N videos (prompt i, seed 100 + i, the same size/frames/steps) in the
server's output kind (MP4 with FFmpeg, else PNG frames). Times are wall clock from the first process start to the last video written, so the
server's start and model load count once, the CLI's N times. Standard library only.

    python3 scripts/bench-serve.py --osp build/osp --model models/osp-next-tiny --jobs 8
    python3 scripts/bench-serve.py --osp build-gpu/osp --model /tmp/m13 --device cuda \\
        --size 832x480 --frames 33 --steps 10 --jobs 6

Prints a table and one JSON line ({"bench": "serve", ...}); --json FILE writes it too.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

PROMPTS = [
    "a red circle moves up on a black background",
    "a blue square moves from left to right on a white background",
    "a green triangle moves down on a dark blue background",
    "a yellow ring grows on a black background",
    "a magenta cross moves from right to left on a beige background",
    "a cyan circle shrinks on a dark green background",
    "a red square bounces up and down on a white background",
    "a blue triangle rotates on a black background",
]


def job(i):
    return {"prompt": PROMPTS[i % len(PROMPTS)], "seed": 100 + i}


def http(method, url, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def run_server(a, work):
    out_dir = os.path.join(work, "serve-out")
    cmd = [a.osp, "serve", "-m", a.model, "--device", a.device, "--port", "0", "--queue", str(a.jobs),
           "--out-dir", out_dir, "--size", a.size, "--frames", str(a.frames), "--steps", str(a.steps),
           "--max-size", a.size, "--max-frames", str(a.frames), "--max-steps", str(a.steps)]
    t0 = time.monotonic()
    log_path = os.path.join(work, "serve.log")
    log = open(log_path, "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    port = None
    try:
        while port is None:  # osp serve reports the address it listens on (stderr)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(log_path).read())
            if m:
                port = int(m.group(1))
            elif p.poll() is not None:
                raise SystemExit("osp serve exited:\n" + open(log_path).read()[-2000:])
            else:
                time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                http("GET", base + "/v1/health")
                break
            except OSError:
                if p.poll() is not None:
                    raise SystemExit("osp serve exited (see serve.log)")
                time.sleep(0.05)
        t_ready = time.monotonic()
        a.output = http("GET", base + "/v1/health").get("output", "png")
        ids = [http("POST", base + "/v1/generations", job(i))["id"] for i in range(a.jobs)]
        pending = set(ids)
        while pending:
            for i in list(pending):
                st = http("GET", f"{base}/v1/generations/{i}")
                if st["status"] in ("failed", "cancelled"):
                    raise SystemExit(f"job {i} {st['status']}: {st.get('error')}")
                if st["status"] == "succeeded":
                    pending.discard(i)
            time.sleep(0.05)
        t1 = time.monotonic()
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    return {"total_s": t1 - t0, "ready_s": t_ready - t0, "jobs_s": t1 - t_ready}


def gen_args(a):
    return ["--size", a.size, "--frames", str(a.frames), "--steps", str(a.steps), "--device", a.device]


def run_cli(a, work):
    t0 = time.monotonic()
    for i in range(a.jobs):
        j = job(i)
        out = os.path.join(work, f"cli-{i}") + (".mp4" if a.output == "mp4" else "/")
        subprocess.run([a.osp, "-q", "generate", "-m", a.model, "--prompt", j["prompt"], "--seed", str(j["seed"]),
                        "--out", out, "--overwrite"] + gen_args(a), check=True)
    return {"total_s": time.monotonic() - t0}


def run_batch(a, work):
    lines = os.path.join(work, "prompts.jsonl")
    with open(lines, "w") as f:
        for i in range(a.jobs):
            f.write(json.dumps(dict(job(i), out=f"b{i}" + (".mp4" if a.output == "mp4" else "/"))) + "\n")
    out = os.path.join(work, "batch") + "/"
    os.makedirs(out, exist_ok=True)
    t0 = time.monotonic()
    subprocess.run([a.osp, "-q", "generate", "-m", a.model, "--prompts", lines, "--out", out, "--overwrite"] + gen_args(a),
                   check=True)
    return {"total_s": time.monotonic() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--osp", default="build/osp")
    ap.add_argument("--model", default="models/osp-next-tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--size", default="64x64")
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    # `osp --version` names the build's features: a build without cpp-httplib has no server
    version = subprocess.run([a.osp, "--version"], capture_output=True, text=True).stdout
    if "osp serve (cpp-httplib) off" in version:
        sys.exit(f"bench-serve: {a.osp} was built without cpp-httplib, so it has no `osp serve` ({version.strip()}); "
                 "on the GPU machine carry Debian's (scripts/carry-httplib.sh) and reconfigure")
    work = tempfile.mkdtemp(prefix="osp-bench-serve-")
    try:
        serve = run_server(a, work)  # first: it tells the output kind the others then match
        cli = run_cli(a, work)
        batch = run_batch(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = a.jobs
    print(f"{n} jobs, {a.size}x{a.frames}, {a.steps} steps, {a.device}, model {a.model}, output {a.output}")
    print("| run | wall s | s per job | vs CLI one by one |")
    print("|---|---|---|---|")
    for name, r in (("osp generate, one process per job", cli), ("osp generate --prompts (one process)", batch),
                    ("osp serve (start + load + queue)", serve)):
        print(f"| {name} | {r['total_s']:.2f} | {r['total_s'] / n:.3f} | {cli['total_s'] / r['total_s']:.2f}x |")
    print(f"server: ready (started, model loaded) after {serve['ready_s']:.2f} s, the {n} jobs took {serve['jobs_s']:.2f} s")
    row = {"bench": "serve", "jobs": n, "size": a.size, "frames": a.frames, "steps": a.steps, "device": a.device,
           "model": a.model, "cli_s": cli["total_s"], "batch_s": batch["total_s"], "serve_s": serve["total_s"],
           "serve_ready_s": serve["ready_s"], "serve_jobs_s": serve["jobs_s"]}
    print(json.dumps(row))
    if a.json:
        with open(a.json, "w") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
