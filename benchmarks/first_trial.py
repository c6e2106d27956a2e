"""Time from `convc tune` starting to its first measured candidates, per example, on a CPU with
no records (a fresh records directory, CONVC_SCHEDULES pointing at nothing to seed from), one
round of the search each (`--budget 1s`: the first round always runs).

    python benchmarks/first_trial.py [examples/*.conv] [--batch 1]

Prints a Markdown table: seconds from the command's start (wall, and CPU of the tuning process
and its finished builders) to the first measured default schedule and to the first measured
round of the search, and the load average at the start (the machine may be shared: wall time
grows with the load, CPU time much less).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", default=sorted(str(p) for p in Path("examples").glob("*.conv")))
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    env = dict(os.environ, CONVC_SCHEDULES=tempfile.mkdtemp(prefix="convc-no-records-"))
    print("| example | first default: wall s (CPU s) | first search round: wall s (CPU s) | load average |")
    print("|---|---|---|---|")
    for file in args.files:
        directory = Path(tempfile.mkdtemp(prefix="convc-first-")) / "records"
        load = os.getloadavg()[0]
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "convc.cli", "tune", file, "--batch", str(args.batch),
                               "--budget", "1s", "--records", str(directory)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {Path(file).stem} | failed: {done.stderr.strip().splitlines()[-1:]} | | |", flush=True)
            continue
        rows = [json.loads(line) for line in (directory / "history.jsonl").read_text().splitlines()]
        cells = []
        for source in ("default", "search"):
            row = next((r for r in rows if r["source"] == source), None)
            cells.append(f"{row['t'] - started:.1f} ({row['cpu_s']:.1f})" if row else "-")
        print(f"| {Path(file).stem} | {cells[0]} | {cells[1]} | {load:.1f} |", flush=True)


if __name__ == "__main__":
    main()
