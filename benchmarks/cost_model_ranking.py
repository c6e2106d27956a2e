"""Does the pre-trained cost model rank candidates of kernels it has never seen? Offline and
load-independent: for every kernel of one network in a records directory, rank its measured
candidates with a cost model fitted WITHOUT that network's kernels, and compare the best
latency among the model's top picks with what picking at random gives (the untrained model
predicts random scores until it has 100 samples).

    python benchmarks/pretrain_cost_model.py --leave-out examples/cifar10_11pct.conv:1 -o /tmp/loo
    python benchmarks/cost_model_ranking.py examples/cifar10_11pct.conv:1 --model /tmp/loo
"""
from __future__ import annotations

import argparse
import os

import numpy as np

import convc
from convc import tuning
from convc.build import fuse, prim_funcs, relax_module


def _candidates(db, mod, target):
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    workload = db.commit_workload(mod)
    records = [r for r in db.get_top_k(workload, 10 ** 6) if r.run_secs]
    cands, secs = [], []
    for r in records:
        sch = s_tir.Schedule(mod)
        try:
            r.trace.apply_to_schedule(sch, remove_postproc=False)
        except Exception:      # noqa: BLE001
            continue
        cands.append(ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
        secs.append(float(np.median([float(s) for s in r.run_secs])))
    return cands, np.array(secs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("net", help="NET.conv:BATCH")
    parser.add_argument("--model", required=True)
    parser.add_argument("--records", default=None, help="default: schedules/<this target>")
    parser.add_argument("--pick", type=int, default=16, help="candidates picked per round (default 16)")
    args = parser.parse_args()
    from tvm.s_tir import meta_schedule as ms
    path, _, batch = args.net.partition(":")
    net = convc.parse_file(path)
    info = convc.build.make_target("llvm")
    directory = args.records or tuning.SCHEDULES / info.name
    db = tuning.open_database(directory, write=False)
    model = tuning.load_cost_model(None, args.model, info)
    rng = np.random.default_rng(0)
    print(f"| kernel | candidates | best ms | best of model's top {args.pick} | best of {args.pick} at random (mean) | Spearman |")
    print("|---|---|---|---|---|---|")
    ratios_model, ratios_random = [], []
    for name, func in prim_funcs(fuse(relax_module(net, int(batch or 1)))).items():
        mod, _ = tuning.workload_key(func)
        if not db.has_workload(mod):
            continue
        cands, secs = _candidates(db, mod, info.target)
        if len(cands) <= args.pick:
            continue
        context = ms.TuneContext(mod=mod, target=info.target, num_threads=os.cpu_count() or 1, task_name=name)
        scores = model.predict(context, cands)
        top = np.argsort(-scores)[:args.pick]
        best_model = secs[top].min()
        random_best = np.mean([secs[rng.choice(len(secs), args.pick, replace=False)].min() for _ in range(2000)])
        rank_s, rank_p = np.argsort(np.argsort(secs)), np.argsort(np.argsort(-scores))
        spearman = np.corrcoef(rank_s, rank_p)[0, 1]
        ratios_model.append(best_model / secs.min())
        ratios_random.append(random_best / secs.min())
        print(f"| {name} | {len(secs)} | {secs.min() * 1e3:.4f} | {best_model / secs.min():.2f}x best | "
              f"{random_best / secs.min():.2f}x best | {spearman:.2f} |")
    print(f"geometric mean over kernels: model's pick {np.exp(np.mean(np.log(ratios_model))):.2f}x the best, "
          f"random pick {np.exp(np.mean(np.log(ratios_random))):.2f}x the best")


if __name__ == "__main__":
    main()
