"""Does a pre-trained cost model help? Tune one network twice from nothing (fresh records
directories, no seeds), once starting from a pre-trained cost model and once from a fresh one,
and draw both best-so-far curves (network estimate against time and against trials).

    python benchmarks/cost_model_curve.py examples/cifar10_11pct.conv --budget 4m \\
        --model /tmp/loo -o docs/cost-model-curve.png

Run it where nothing else tunes: both runs are timed on this machine, one after the other.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import convc
from convc import tuning


def run(net, batch, budget, model, seed) -> list[dict]:
    directory = Path(tempfile.mkdtemp(prefix="convc-curve-"))
    result = convc.tune(net, "llvm", batch=batch, budget=budget, records=directory / "records",
                        cost_model=model, seed=seed, progress=False)
    print(result.table())
    # the network estimate is complete once every default is measured: the search's rows
    return [r for r in tuning.read_history(directory / "records") if r.get("source") != "default"]


def at(rows, key, limit):
    seen = [r["network_s"] for r in rows if r[key] <= limit and r["network_s"]]
    return min(seen) if seen else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--budget", default="4m")
    parser.add_argument("--model", required=True, help="directory of the pre-trained cost model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="cost-model-curve.png")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    empty = tempfile.mkdtemp(prefix="convc-no-records-")
    tuning.SCHEDULES = Path(empty)            # a CPU with no records: nothing to seed from
    net = convc.parse_file(args.file)
    curves = {"pre-trained cost model": run(net, args.batch, args.budget, args.model, args.seed),
              "fresh cost model": run(net, args.batch, args.budget, None, args.seed)}
    for rows in curves.values():
        search = 0
        for r in rows:
            search += r["source"] == "search"
            r["search_rows"] = search
    budget = tuning.parse_budget(args.budget)
    print(json.dumps({name: {f"{int(100 * q)}%": at(rows, "elapsed_s", q * budget) for q in (0.25, 0.5, 0.75, 1.0)}
                      for name, rows in curves.items()}, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, rows in curves.items():
        best, xs, ys, ts = float("inf"), [], [], []
        for r in rows:
            best = min(best, r["network_s"] * 1e3)
            xs.append(r["elapsed_s"])
            ts.append(sum(1 for q in rows[:len(xs)] if q["source"] == "search"))
            ys.append(best)
        left.step(xs, ys, where="post", label=name)
        right.step(ts, ys, where="post", label=name)
    left.set_xlabel("seconds since `convc tune` started")
    right.set_xlabel("measured rounds of the search")
    for ax in (left, right):
        ax.set_ylabel("network estimate, best so far (ms)")
        ax.set_yscale("log")
        ax.legend()
    fig.suptitle(f"{net.name} batch {args.batch}, --budget {args.budget}")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
