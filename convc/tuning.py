"""Stage 5: auto-tuning with MetaSchedule, and the tuning records every build looks up.

Records live in one directory per target (`schedules/llvm-znver5/`, `schedules/cuda-sm_90a/`):
MetaSchedule's two JSON tables plus `kernels.json` (convc's verdict per kernel: untuned and
tuned time, trials, and whether the tuned schedule is kept) and `history.jsonl` (the curve).
Kernels are keyed by their structural hash, which includes every shape, so one directory holds
all batch sizes. A kill at any moment leaves tables that load: MetaSchedule appends one line
per record, and `open_database` drops a torn last line.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConvcError, file_error

def _schedules_root() -> Path:
    """schedules/ of a source checkout (shipped records); for an installed wheel, a user cache."""
    if os.environ.get("CONVC_SCHEDULES"):
        return Path(os.environ["CONVC_SCHEDULES"])
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / "schedules"
    return Path.home() / ".cache" / "convc" / "schedules"


SCHEDULES = _schedules_root()
WORKLOADS, RECORDS, VERDICTS, HISTORY = ("database_workload.json", "database_tuning_record.json",
                                         "kernels.json", "history.jsonl")
KEEP_MARGIN = 0.97     # a tuned kernel must be at least 3% faster than its untuned build to be kept


# ----------------------------------------------------------------------------- records on disk
def record_dirs(info, records) -> list[Path]:
    """The records directories a build uses. "auto" is schedules/<target>/, shipped with convc."""
    if records is None:
        return []
    items = [records] if isinstance(records, (str, Path)) else list(records)
    dirs = [SCHEDULES / info.name if str(item) == "auto" else Path(item) for item in items]
    for d in dirs:
        if str(d) != str(SCHEDULES / info.name) and not d.is_dir():
            raise file_error(d, "no such records directory")
        if d.is_dir() and (d / "target.json").exists():
            recorded = json.loads((d / "target.json").read_text()).get("target")
            if recorded != info.name:
                raise file_error(d, f"these records are for {recorded}, not {info.name}; "
                                    "records are never applied to another CPU or GPU")
    return [d for d in dirs if (d / RECORDS).exists()]


def _valid_lines(path: Path, check) -> tuple[list[str], bool]:
    if not path.exists():
        return [], False
    kept, dropped = [], False
    for line in path.read_text().splitlines():
        try:
            if line.strip() and check(json.loads(line)):
                kept.append(line)
                continue
        except ValueError:
            pass
        dropped = True
    return kept, dropped


def _checked_lines(directory: Path):
    workloads, bad_w = _valid_lines(directory / WORKLOADS, lambda v: isinstance(v, list) and len(v) == 2)
    records, bad_r = _valid_lines(directory / RECORDS,
                                  lambda v: isinstance(v, list) and isinstance(v[0], int) and v[0] < len(workloads))
    return workloads, records, bad_w or bad_r


def repair(directory: Path) -> bool:
    """Drop torn or dangling lines (a run killed mid-write); True if something was dropped."""
    workloads, records, bad = _checked_lines(directory)
    if bad:
        _atomic_write(directory / WORKLOADS, "".join(line + "\n" for line in workloads))
        _atomic_write(directory / RECORDS, "".join(line + "\n" for line in records))
    return bad


def _atomic_write(path: Path, text: str):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def open_database(directory: Path, write: bool = True):
    """The records of a directory. Tuning (write) repairs a torn line in place; a build only
    reads, from a repaired copy, so it never rewrites files a running tune appends to."""
    from tvm.s_tir import meta_schedule as ms
    if write:
        directory.mkdir(parents=True, exist_ok=True)
        repair(directory)
        return ms.database.JSONDatabase(work_dir=str(directory))
    workloads, records, bad = _checked_lines(directory)
    if not bad:
        return ms.database.JSONDatabase(work_dir=str(directory), allow_missing=False)
    with tempfile.TemporaryDirectory(prefix="convc-records-") as copy:   # the database loads it all now
        (Path(copy) / WORKLOADS).write_text("".join(line + "\n" for line in workloads))
        (Path(copy) / RECORDS).write_text("".join(line + "\n" for line in records))
        return ms.database.JSONDatabase(work_dir=copy, allow_missing=False)


def load_verdicts(directory: Path) -> dict:
    try:
        return json.loads((directory / VERDICTS).read_text())
    except (OSError, ValueError):
        return {}


def workload_key(func) -> tuple:
    """How MetaSchedule keys a kernel: the PrimFunc as `main`, with its global symbol."""
    import tvm
    import tvm_ffi
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return mod, str(tvm_ffi.structural_hash(mod))


def apply_records(fused, info, records, batch, report):
    """Replace every kernel that has a kept record by its tuned schedule; report the rest."""
    from .build import prim_funcs
    dirs = record_dirs(info, records)
    report.records = [str(d) for d in dirs]
    sources = [(open_database(d, write=False), load_verdicts(d)) for d in dirs]
    for name, func in prim_funcs(fused).items():
        mod, key = workload_key(func)
        tuned = None
        for db, verdicts in sources:
            if verdicts.get(key, {}).get("keep") is False:
                continue        # measured: the untuned build is faster
            schedule = db.query_schedule(mod, info.target, "main")
            if schedule is not None:
                tuned = schedule.mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
                break
        if tuned is not None:
            fused[name] = tuned
            report.tuned.append(name)
        else:
            report.untuned.append(name)
    return fused


# ----------------------------------------------------------------------------- MetaSchedule's start-up
def _fast_stack(context=1):
    """inspect.stack() without inspect.getmodule per frame (which scans sys.modules each time)."""
    import inspect
    import linecache
    frame, out = sys._getframe(1), []
    while frame is not None:
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        out.append(inspect.FrameInfo(frame, frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name,
                                     [line] if line else None, 0))
        frame = frame.f_back
    return out


def preload_tensor_intrin():
    """MetaSchedule imports tvm.s_tir.tensor_intrin in every TuneContext: ~500 TVMScript
    functions, each parsed with inspect.stack(), 15-45 s here. The same import with a cheap
    stack walk takes a second; the functions it registers are the same."""
    import inspect
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    slow, inspect.stack = inspect.stack, _fast_stack
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = slow


# ----------------------------------------------------------------------------- builders, runners
def fast_build(mod, target, _params):
    """MetaSchedule's default build without its 15 s `import tvm.s_tir.tensor_intrin`."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


def cuda_build(mod, target, params):
    """fast_build, then nvcc on the generated source: broken CUDA fails when it is built."""
    import subprocess
    rt = fast_build(mod, target, params)
    source = rt.imports[0].inspect_source() if rt.imports else ""
    if source and _which("nvcc"):
        arch = str(target.attrs.get("arch", "sm_90a"))
        with tempfile.TemporaryDirectory() as d:
            cu = Path(d) / "k.cu"
            cu.write_text(source)
            done = subprocess.run(["nvcc", "-cubin", f"-arch={arch}", "-o", str(cu.with_suffix(".cubin")), str(cu)],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"nvcc rejected the generated CUDA: {done.stderr[-1000:]}")
    return rt


def _which(name):
    import shutil
    return shutil.which(name)


def make_runner(info, rpc: str | None, key: str | None):
    from tvm.s_tir import meta_schedule as ms
    config = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20, enable_cpu_cache_flush=False)
    if rpc:
        host, _, port = rpc.rpartition(":")
        if not host or not port.isdigit():
            raise ConvcError(f"--rpc wants HOST:PORT of an RPC tracker, got {rpc!r}")
        if not key:
            raise ConvcError("--rpc needs --key: the device key the servers registered with the tracker")
        return ms.runner.RPCRunner(rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port),
                                                                  tracker_key=key, session_timeout_sec=60),
                                   evaluator_config=config, max_workers=1)
    import tvm
    if info.kind == "cuda" and not tvm.cuda().exist:
        raise ConvcError("tuning for cuda needs a GPU to measure on: run convc tune on a GPU machine, or "
                         "measure remotely with --rpc HOST:PORT --key KEY (TVM's RPC tracker)")
    return ms.runner.LocalRunner(evaluator_config=config, timeout_sec=60)


# ----------------------------------------------------------------------------- timing one kernel
def time_kernel(func, target, device, repeat=3) -> float:
    """Median seconds of one PrimFunc built alone, on random arguments."""
    import tvm
    name = "kernel"
    lib = tvm.tirx.build(tvm.IRModule({name: func.with_attr("global_symbol", name)}), target=target)
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in p.ty.shape]).astype(str(p.ty.dtype)), device)
            for p in func.params]
    once = lib.time_evaluator(name, device, number=1, repeat=1)(*args).mean
    number = max(1, int(0.05 / max(once, 1e-7)))
    results = lib.time_evaluator(name, device, number=number, repeat=repeat)(*args).results
    return float(np.median(results))


# ----------------------------------------------------------------------------- tuning
@dataclass
class KernelResult:
    name: str
    layers: list[str]
    weight: int
    untuned: float | None          # seconds
    tuned: float | None
    trials: int = 0
    failures: int = 0
    first_error: str | None = None
    keep: bool = False
    prior: int = 0                  # trials of earlier runs (records are resumed)

    @property
    def best(self):
        return self.tuned if self.keep and self.tuned else self.untuned


@dataclass
class TuneResult:
    records: Path
    target: str
    kernels: list[KernelResult] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        rows = [("kernel", "layers", "untuned ms", "tuned ms", "speedup", "trials", "failed", "kept")]
        for k in self.kernels:
            speed = f"{k.untuned / k.tuned:.2f}x" if k.untuned and k.tuned else "-"
            rows.append((k.name, ",".join(k.layers), _ms(k.untuned), _ms(k.tuned), speed, str(k.trials),
                         str(k.failures), "tuned" if k.keep else "untuned"))
        before = sum((k.untuned or 0) * k.weight for k in self.kernels)
        after = sum((k.best or 0) * k.weight for k in self.kernels)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        if before:
            lines.append(f"network (sum of kernels): untuned {before * 1e3:.3f} ms -> {after * 1e3:.3f} ms"
                         + (f" ({before / after:.2f}x)" if after else "") + f"; tuning took {self.seconds:.0f} s")
        else:               # measured remotely: the untuned builds were not timed
            lines.append(f"network (sum of tuned kernels, measured remotely): {after * 1e3:.3f} ms; "
                         f"tuning took {self.seconds:.0f} s")
        lines.append(f"records: {self.records}")
        return "\n".join(lines)


def _ms(seconds):
    return f"{seconds * 1e3:.3f}" if seconds else "-"


def _progress_callback(bar, state):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            kernel = state["kernels"][task_id]
            for built, ran in zip(builder_results, runner_results):
                kernel.trials += 1
                error = built.error_msg or ran.error_msg
                secs = [float(s) for s in (ran.run_secs or [])]
                if error or not secs or min(secs) >= 1e9:
                    kernel.failures += 1
                    kernel.first_error = kernel.first_error or (error or "no time measured")
                    continue
                best = float(np.median(secs))
                kernel.tuned = best if kernel.tuned is None else min(kernel.tuned, best)
            network = sum(min(filter(None, (k.tuned, k.untuned)), default=0) * k.weight for k in state["kernels"])
            bar.update(len(runner_results))
            bar.set_postfix_str(f"{kernel.name}: best {_ms(kernel.tuned)} ms, net ~{network * 1e3:.2f} ms")
            with open(state["history"], "a") as f:
                f.write(json.dumps({"kernel": kernel.name, "trials": kernel.prior + kernel.trials, "best_s": kernel.tuned,
                                    "untuned_s": kernel.untuned, "network_s": network, "t": time.time()}) + "\n")

    return Progress()


def _quiet_metaschedule():
    """MetaSchedule's own logs go to <records>/logs, not the terminal: it gives its console
    handler the level its logger has when tuning starts (and sets the logger to DEBUG after)."""
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.ERROR)


def tune(net, target: str = "llvm", trials: int = 200, batch: int = 1, records=None, per_kernel: int | None = None,
         seed: int = 0, rpc: str | None = None, key: str | None = None, arch: str | None = None,
         progress: bool = True, plot: str | None = None, per_iter: int = 16) -> TuneResult:
    """Tune every fused kernel of `net`; records go to `records` (default schedules/<target>/)."""
    from tqdm import tqdm
    from tvm.s_tir import meta_schedule as ms

    from .build import fuse, kernel_layers, make_target, prim_funcs, relax_module

    started = time.time()
    preload_tensor_intrin()
    if trials < 1:
        raise ConvcError(f"--trials must be at least 1, got {trials}")
    info = make_target(target, arch)
    runner = make_runner(info, rpc, key)
    directory = Path(records) if records else SCHEDULES / info.name
    target_file = directory / "target.json"
    if target_file.exists() and json.loads(target_file.read_text()).get("target") != info.name:
        raise file_error(directory, f"holds records for {json.loads(target_file.read_text()).get('target')}, "
                                    f"not {info.name}", "give each target its own records directory")
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    _atomic_write(target_file, json.dumps({"target": info.name, "config": str(info.target)}, indent=1))

    mod = relax_module(net, batch)
    layers_of, _ = kernel_layers(mod, net)
    fused = fuse(mod)
    funcs = prim_funcs(fused)
    tasks = {t.task_name: t for t in ms.relax_integration.extract_tasks(fused, info.target)}
    measure_here = rpc is None
    verdicts = load_verdicts(directory)
    db = open_database(directory)

    kernels = []
    for name, task in tasks.items():
        untuned = time_kernel(funcs[name], info.target, info.device) if measure_here else None
        prior = verdicts.get(workload_key(funcs[name])[1], {}).get("trials", 0)
        kernels.append(KernelResult(name, layers_of.get(name, [name]), int(task.weight), untuned, None, prior=prior))
    # the biggest share of the run time first: the scheduler's warm-up round goes in this order
    kernels.sort(key=lambda k: -(k.untuned or 0) * k.weight)
    builder = ms.builder.LocalBuilder(f_build=cuda_build if info.kind == "cuda" else fast_build,
                                      max_workers=os.cpu_count() or 1, timeout_sec=120)
    state = {"kernels": kernels, "current": None, "history": directory / HISTORY}
    result = TuneResult(directory, info.name, kernels)
    bar = tqdm(total=trials, desc=f"tuning {net.name}", unit="trial", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), _progress_callback(bar, state)]
    _quiet_metaschedule()
    contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
        [tasks[k.name] for k in kernels], str(directory), num_threads=os.cpu_count() or 1, seed=seed)
    try:
        # MetaSchedule's gradient task scheduler gives each round of trials to the kernel whose
        # share of the network's current (best-so-far) run time promises the largest gain.
        _quiet_metaschedule()
        ms.tune_tasks(tasks=contexts, task_weights=[float(k.weight) for k in kernels], work_dir=str(directory),
                      max_trials_global=trials, max_trials_per_task=per_kernel or trials,
                      num_trials_per_iter=max(1, min(per_iter, trials // len(kernels))), builder=builder, runner=runner, database=db,
                      measure_callbacks=callbacks, task_scheduler="gradient")
    finally:
        bar.close()
        result.seconds = time.time() - started
    for kernel in kernels:
        _judge(kernel, funcs[kernel.name], db, info, measure_here, verdicts, directory)
        if kernel.trials and kernel.failures == kernel.trials:
            print(f"error: every candidate for kernel {kernel.name} failed; first error:\n{kernel.first_error}",
                  file=sys.stderr)
    if plot:
        plot_history(directory, plot)
    return result


def _judge(kernel, func, db, info, measure_here, verdicts, directory):
    """Keep the tuned schedule only if it beats the untuned build, both measured here, in turns
    (the best of three rounds each, so a burst of load on a shared machine hurts neither)."""
    mod, key = workload_key(func)
    record = db.query_tuning_record(mod, info.target, "main")
    previous = verdicts.get(key, {})
    kernel.trials = previous.get("trials", 0) + kernel.trials
    if record is None:
        return
    schedule = db.query_schedule(mod, info.target, "main")
    if measure_here:
        tuned_func = schedule.mod["main"].without_attr("global_symbol")
        rounds = [(time_kernel(func, info.target, info.device), time_kernel(tuned_func, info.target, info.device))
                  for _ in range(3)]
        kernel.untuned = min(u for u, _ in rounds)
        kernel.tuned = min(t for _, t in rounds)
    else:
        kernel.tuned = float(np.median([float(s) for s in record.run_secs]))
    kernel.keep = kernel.untuned is None or kernel.tuned < KEEP_MARGIN * kernel.untuned
    verdicts[key] = {"kernel": kernel.name, "layers": kernel.layers, "untuned_s": kernel.untuned,
                     "tuned_s": kernel.tuned, "keep": kernel.keep, "trials": kernel.trials,
                     "failures": kernel.failures + previous.get("failures", 0)}
    _atomic_write(directory / VERDICTS, json.dumps(verdicts, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------- plots
def plot_history(directory: Path, output) -> Path:
    """Best latency against trials: one line per kernel, and the network's estimated total."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(directory) / HISTORY
    if not path.exists():
        raise file_error(directory, f"no tuning history ({HISTORY}) to plot", "run `convc tune` first")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(8, 5))
    total = 0
    network = []
    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        own = [r for r in rows if r["kernel"] == kernel and r["best_s"]]
        if own:
            ax.plot([r["trials"] for r in own], [r["best_s"] * 1e3 for r in own], label=kernel, lw=1)
    for r in rows:
        total += 1
        network.append((total, r["network_s"] * 1e3))
    ax2 = ax.twiny()
    ax2.plot(*zip(*network), color="black", lw=2, label="network (estimate)")
    ax2.set_xlabel("measurement batches, all kernels (black: network estimate)")
    ax.set_xlabel("trials of that kernel")
    ax.set_ylabel("best latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return Path(output)


# ----------------------------------------------------------------------------- CLI verbs
def cmd_tune(args) -> int:
    from . import parse_file
    net = parse_file(args.file)
    result = tune(net, args.target, args.trials, args.batch, args.records, args.per_kernel, args.seed,
                  args.rpc, args.key, args.arch, plot=args.plot)
    print(result.table())
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def cmd_plot(args) -> int:
    print(f"wrote {plot_history(Path(args.records), args.output)}")
    return 0
