"""Stage 5: auto-tuning with MetaSchedule, and the tuning records every build looks up.

Records live in one directory per target (`schedules/llvm-znver5/`, `schedules/cuda-sm_90a/`):
MetaSchedule's two JSON tables plus `kernels.json` (convc's verdict per kernel: default and
tuned time, trials, and whether the tuned schedule is kept), `history.jsonl` (the curve) and
`cost_model.*` (the XGBoost cost model, reloaded when a run resumes). Kernels are keyed by their
structural hash, which includes every shape, so one directory holds all batch sizes. A kill at
any moment leaves tables that load: MetaSchedule appends one line per record, and
`open_database` drops a torn last line.

The search starts from the default schedule (convc/schedule): it is measured first and stored
as a record, so MetaSchedule's evolutionary search starts from it and a tuned kernel is never
slower than its default. A build uses a record only if its verdict says it beats the default.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
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
MODEL_TREES, MODEL_DATA = "cost_model.json", "cost_model.npz"
KEEP_MARGIN = 0.97     # a tuned kernel must be at least 3% faster than its default schedule to be kept
BUDGET_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
SEEDS_PER_KERNEL = 3   # best records of a seed directory measured here per kernel
POPULATION = 128       # evolutionary search population (MetaSchedule's 512 quadruples the time of a round)


# ----------------------------------------------------------------------------- arguments
def parse_budget(text) -> float:
    """'90s', '10m', '1h', '1.5h' or plain seconds -> seconds (> 0)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", str(text))
    if not match:
        raise ConvcError(f"--budget wants a duration such as 90s, 10m or 1h, got {text!r}")
    seconds = float(match[1]) * BUDGET_UNITS[match[2]]
    if seconds <= 0:
        raise ConvcError(f"--budget must be more than zero, got {text!r}")
    return seconds


# ----------------------------------------------------------------------------- records on disk
def read_target(directory: Path) -> dict | None:
    """target.json of a records directory: {"target": "llvm-znver5", "config": "..."}, or None."""
    path = Path(directory) / "target.json"
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
        if isinstance(value, dict) and isinstance(value.get("target"), str):
            return value
        problem = 'has no "target" name'
    except (OSError, UnicodeDecodeError, ValueError) as err:
        problem = f"is not valid JSON ({err})"
    raise file_error(path, f"{problem}; it names the target these records were measured on",
                     'restore it ({"target": "llvm-<mcpu>"}, as `convc tune` writes it) or remove the directory')


def record_dirs(info, records) -> list[Path]:
    """The records directories a build uses. "auto" is schedules/<target>/, shipped with convc."""
    if records is None:
        return []
    items = [records] if isinstance(records, (str, Path)) else list(records)
    dirs = [SCHEDULES / info.name if str(item) == "auto" else Path(item) for item in items]
    for d in dirs:
        if str(d) != str(SCHEDULES / info.name) and not d.is_dir():
            raise file_error(d, "no such records directory")
        recorded = (read_target(d) or {}).get("target") if d.is_dir() else None
        if recorded is not None and recorded != info.name:
            seeds = " (`--seed-records DIR` measures these as starting candidates)" \
                if recorded.split("-")[0] == info.kind else ""
            raise file_error(d, f"these records are for {recorded}, not {info.name}; "
                                "records are never applied to another CPU or GPU",
                             f"make records for {info.name} with `convc tune NET --budget 10m`{seeds}")
    return [d for d in dirs if (d / RECORDS).exists()]


def other_record_sets(info) -> dict[str, Path]:
    """Record sets shipped (or tuned here) for other targets of the same kind: {target name: dir}."""
    found = {}
    if not SCHEDULES.is_dir():
        return found
    for d in sorted(SCHEDULES.iterdir()):
        if d.name == info.name or not (d / RECORDS).exists():
            continue
        try:
            name = (read_target(d) or {}).get("target", d.name)
        except ConvcError:
            continue
        if name.split("-")[0] == info.kind:
            found[name] = d
    return found


def vector_isa(config) -> tuple[str, int] | None:
    """(architecture, fp32 lanes) of a CPU target, for offering one CPU's records to another."""
    from tvm.target import Target
    from .schedule import cpu
    try:
        target = config if isinstance(config, Target) else Target(json.loads(config))
        if target.kind.name != "llvm":
            return None
        triple = str(target.attrs.get("mtriple", "x86_64"))
        return triple.split("-")[0], cpu.isa(target).lanes
    except Exception:     # noqa: BLE001 - an unreadable config offers nothing
        return None


def same_isa_sets(info) -> dict[str, Path]:
    """Other CPUs' record sets with this CPU's vector ISA: seeds for its first tune."""
    mine = vector_isa(info.target)
    out = {}
    for name, d in other_record_sets(info).items():
        config = (read_target(d) or {}).get("config")
        if mine is not None and config and vector_isa(config) == mine:
            out[name] = d
    return out


def no_records_hint(info) -> str:
    """What a build on a target without records says."""
    others = other_record_sets(info)
    seeds = same_isa_sets(info) if info.kind == "llvm" else {}
    text = f"no tuning records for {info.name}: every kernel uses its default schedule"
    if others:
        text += f"; record sets exist for {', '.join(others)} (never applied to another CPU or GPU)"
    text += f"\nhelp: tune this {'CPU' if info.kind == 'llvm' else 'GPU'}: `convc tune NET --budget 10m`"
    if seeds:
        text += f" (it measures the records of {', '.join(seeds)}, same vector ISA, as starting candidates)"
    return text


def _valid_lines(path: Path, check) -> tuple[list[str], bool]:
    if not path.exists():
        return [], False
    kept, dropped = [], False
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        text = path.read_bytes().decode("utf-8", "replace")
    for line in text.splitlines():
        try:
            if line.strip() and check(json.loads(line)):
                kept.append(line)
                continue
        except (ValueError, TypeError, IndexError, KeyError):
            pass
        dropped = True
    return kept, dropped


def _is_workload(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v) and v[0].isdigit()


def _is_record(v, n_workloads) -> bool:
    """[workload index, [trace, run_secs, target, args_info]] as MetaSchedule writes it."""
    if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and 0 <= v[0] < n_workloads):
        return False
    body = v[1]
    if not (isinstance(body, list) and len(body) == 4 and isinstance(body[0], list) and len(body[0]) == 2):
        return False
    insts, decisions = body[0]
    secs = body[1]
    return (isinstance(insts, list) and all(isinstance(i, list) and len(i) == 4 and isinstance(i[0], str)
                                            for i in insts)
            and isinstance(decisions, list)
            and (secs is None or (isinstance(secs, list) and all(isinstance(s, (int, float)) for s in secs)))
            and isinstance(body[2], dict) and isinstance(body[3], list))


def _checked_lines(directory: Path):
    workloads, bad_w = _valid_lines(directory / WORKLOADS, _is_workload)
    records, bad_r = _valid_lines(directory / RECORDS, lambda v: _is_record(v, len(workloads)))
    return workloads, records, bad_w or bad_r


def repair(directory: Path) -> bool:
    """Drop torn, corrupt or dangling lines (a run killed mid-write, an edit); True if some were."""
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


def _load_json_database(work_dir: str, directory: Path):
    from tvm.s_tir import meta_schedule as ms
    try:
        return ms.database.JSONDatabase(work_dir=work_dir, allow_missing=True)
    except Exception as err:      # noqa: BLE001 - a line that parses but is not a record TVM accepts
        raise file_error(directory, f"the tuning records do not load ({WORKLOADS}, {RECORDS}): "
                                    f"{str(err).splitlines()[-1][:300] if str(err) else type(err).__name__}",
                         "remove the broken lines, or the directory, and tune again") from None


def open_database(directory: Path, write: bool = True):
    """The records of a directory. Tuning (write) repairs a torn line in place; a build only
    reads, from a repaired copy, so it never rewrites files a running tune appends to."""
    directory = Path(directory)
    if write:
        directory.mkdir(parents=True, exist_ok=True)
        repair(directory)
        return _load_json_database(str(directory), directory)
    workloads, records, bad = _checked_lines(directory)
    if not bad:
        return _load_json_database(str(directory), directory)
    with tempfile.TemporaryDirectory(prefix="convc-records-") as copy:   # the database loads it all now
        (Path(copy) / WORKLOADS).write_text("".join(line + "\n" for line in workloads))
        (Path(copy) / RECORDS).write_text("".join(line + "\n" for line in records))
        return _load_json_database(copy, directory)


def _mean_seconds(body) -> float | None:
    """A record's mean run time; None for a failed or unmeasured one (MetaSchedule's IsValid)."""
    secs = body[1]
    if not secs or not all(0 <= s < 1e10 for s in secs):
        return None
    return sum(secs) / len(secs)


def open_best_records(directory: Path, keys, per_workload: int = 1):
    """Only the best `per_workload` records of the workloads hashed `keys`, loaded alone. A build
    needs one record per kernel, and loading a whole directory parses every workload and trace
    in it (seconds per build once a few networks are tuned); the files are not changed."""
    directory = Path(directory)
    workloads, records, _ = _checked_lines(directory)
    keys = set(keys)
    wanted = {i for i, line in enumerate(workloads) if json.loads(line)[0] in keys}
    ranked: dict[int, list] = {}
    for line in records:
        index, body = json.loads(line)
        seconds = _mean_seconds(body) if index in wanted else None
        if seconds is not None:
            ranked.setdefault(index, []).append((seconds, body))
    kept_workloads = sorted(ranked)
    best = [json.dumps([new, body]) for new, old in enumerate(kept_workloads)
            for _, body in sorted(ranked[old], key=lambda r: r[0])[:per_workload]]
    with tempfile.TemporaryDirectory(prefix="convc-records-") as copy:   # the database loads it all now
        (Path(copy) / WORKLOADS).write_text("".join(workloads[i] + "\n" for i in kept_workloads))
        (Path(copy) / RECORDS).write_text("".join(line + "\n" for line in best))
        return _load_json_database(copy, directory)


def load_verdicts(directory: Path) -> dict:
    """kernels.json: {kernel hash: verdict}. Missing: {}; unreadable: an error, never a silent {}
    (without verdicts, records measured as slower than the default would come back)."""
    path = Path(directory) / VERDICTS
    if not path.exists():
        return {}
    try:
        verdicts = json.loads(path.read_text())
        problem = None
        if not isinstance(verdicts, dict):
            problem = "is not a JSON object of verdicts"
        else:
            bad = [k for k, v in verdicts.items() if not (isinstance(v, dict) and isinstance(v.get("keep"), bool))]
            if bad:
                problem = f"has {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} without a true/false \"keep\" ({bad[0]})"
    except (OSError, UnicodeDecodeError, ValueError) as err:
        problem = f"is not valid JSON ({err})"
    if problem:
        raise file_error(path, f"{problem}; it says which tuned schedules beat the default",
                         f"restore it, or delete it and rerun `convc tune` on {directory} to measure the verdicts "
                         "again (until then, build with --no-records)")
    return verdicts


def judged_against_default(verdict: dict) -> bool:
    """A verdict counts if it compared the record with the default schedule, both timed as a
    build runs them (`deployed`). Older verdicts compared with unscheduled loops (no default_s),
    or timed a default that re-lays weights out with that copy inside every call."""
    return "default_s" in verdict and verdict.get("deployed") is True


def deployer(fused):
    """(kernel name, scheduled PrimFunc) -> the PrimFunc a build runs in that kernel's place.
    A schedule that re-lays weights out (the CPU conv rules; MetaSchedule's RewriteLayout) has
    that copy split into its own kernel, run once at build time for bound weights: timing the
    kernel with the copy inside would charge every call with it (2x on AlexNet's conv3)."""
    from .build import kernel_functions, split_weight_packing

    def deploy(name, func):
        mod = fused.clone()
        mod[name] = func
        return kernel_functions(split_weight_packing(mod, bound=False))[name]
    return deploy


def workload_key(func) -> tuple:
    """How MetaSchedule keys a kernel: the PrimFunc as `main`, with its global symbol."""
    import tvm
    import tvm_ffi
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return mod, str(tvm_ffi.structural_hash(mod))


def apply_records(fused, info, records, batch, report):
    """Replace every kernel whose verdict says its record beats the default by that schedule."""
    from .build import prim_funcs
    dirs = record_dirs(info, records)
    report.records = [str(d) for d in dirs]
    if not dirs and hasattr(report, "hint"):
        report.hint = no_records_hint(info)
    keyed = {name: workload_key(func) for name, func in prim_funcs(fused).items()}
    sources = []
    for directory in dirs:
        verdicts = load_verdicts(directory)
        # a record counts only where it was measured against the default and beat it
        kept = {key for _, key in keyed.values() if verdicts.get(key, {}).get("keep") is True
                and judged_against_default(verdicts[key])}
        if kept:
            sources.append((open_best_records(directory, kept), kept))
    for name, (mod, key) in keyed.items():
        tuned = None
        for db, kept in sources:
            if key not in kept:
                continue
            schedule = _query_schedule(db, mod, info.target)
            if schedule is not None:
                tuned = schedule.mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
                break
        if tuned is not None:
            fused[name] = tuned
            report.tuned.append(name)
        else:
            report.untuned.append(name)
    return fused


def _query_schedule(db, mod, target):
    try:
        return db.query_schedule(mod, target, "main")
    except Exception:     # noqa: BLE001 - a record whose trace no longer applies: the default is used
        return None


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


def candidate_timeout(kernels) -> float:
    """Seconds a candidate may run before it counts as failed: a random schedule can be thousands
    of times slower than the default, and a fixed 60 s let one round of a 0.5 ms kernel take 4
    minutes. 10 s, or more where the defaults themselves are slow."""
    slowest = max((k.default or 0.0 for k in kernels), default=0.0)
    return float(min(60.0, max(10.0, 200 * slowest)))


def make_runner(info, rpc: str | None, key: str | None, timeout: float = 60.0):
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
    return ms.runner.LocalRunner(evaluator_config=config, timeout_sec=timeout)


# ----------------------------------------------------------------------------- timing one kernel
class Timer:
    """One PrimFunc built alone, on random arguments; call it for the median seconds of a run."""

    def __init__(self, func, target, device):
        import tvm
        self.name = "kernel"
        self.lib = tvm.tirx.build(tvm.IRModule({self.name: func.with_attr("global_symbol", self.name)}),
                                  target=target)
        self.device = device
        rng = np.random.default_rng(0)
        self.args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in p.ty.shape]).astype(str(p.ty.dtype)),
                                        device) for p in func.params]
        once = self.lib.time_evaluator(self.name, device, number=1, repeat=1)(*self.args).mean
        self.number = max(1, int(0.05 / max(once, 1e-7)))

    def __call__(self, repeat=3) -> float:
        results = self.lib.time_evaluator(self.name, self.device, number=self.number, repeat=repeat)(*self.args).results
        return float(np.median(results))


def time_kernel(func, target, device, repeat=3) -> float:
    """Median seconds of one PrimFunc built alone, on random arguments."""
    return Timer(func, target, device)(repeat)


# ----------------------------------------------------------------------------- the starting candidates
def default_trace(func, target):
    """(trace, scheduled PrimFunc, rule) of the default schedule, the trace only if replaying it on
    the kernel gives the same code (so it can be stored as a record and seed the search)."""
    import tvm_ffi
    from tvm import s_tir
    from .schedule import rules_for
    for rule in rules_for(target):
        with target:
            sch = rule.apply(func, target, False)
        if isinstance(sch, list):
            sch = sch[0] if sch else None
        if sch is None:
            continue
        scheduled = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        trace = sch.trace
        try:
            replay = s_tir.Schedule(func)
            trace.apply_to_schedule(replay, remove_postproc=False)
            same = tvm_ffi.structural_equal(replay.mod["main"], sch.mod["main"])
        except Exception:     # noqa: BLE001 - a rule that rewrites outside the traced primitives
            same = False
        return (trace if same else None), scheduled, rule.name
    return s_tir.Schedule(func).trace, None, "none"


def _commit(db, workload, trace, seconds, func, target):
    from tvm.s_tir import meta_schedule as ms
    db.commit_tuning_record(ms.database.TuningRecord(
        trace, workload, [seconds], target, ms.arg_info.ArgInfo.from_prim_func(func)))


def _trace_key(trace) -> str:
    return json.dumps(trace.as_json(remove_postproc=False), sort_keys=True, default=str)


def seed_records(db, seed_dirs, kernels, funcs, info, progress, deploy) -> int:
    """The best records of other CPUs' directories, replayed on each kernel here and measured
    here, go into the database as starting candidates; they are never applied unmeasured."""
    from tvm import s_tir
    count = 0
    for directory in seed_dirs:
        source = open_best_records(directory, [workload_key(funcs[k.name])[1] for k in kernels], SEEDS_PER_KERNEL)
        for kernel in kernels:
            mod, _ = workload_key(funcs[kernel.name])
            if not source.has_workload(mod):
                continue
            top = source.get_top_k(source.commit_workload(mod), SEEDS_PER_KERNEL)
            workload = db.commit_workload(mod)
            for record in top:
                if progress.state["stop"] is not None:
                    return count
                progress.phase(f"measuring seeds from {Path(directory).name}: {kernel.name}")
                try:
                    sch = s_tir.Schedule(mod)
                    record.trace.apply_to_schedule(sch, remove_postproc=False)
                    seconds = time_kernel(deploy(kernel.name, sch.mod["main"].without_attr("global_symbol")),
                                          info.target, info.device)
                except Exception:     # noqa: BLE001 - a schedule that does not fit this CPU: not a seed
                    continue
                _commit(db, workload, record.trace, seconds, funcs[kernel.name], info.target)
                kernel.seeds += 1
                count += 1
                progress.measured(kernel, seconds, "seed")
    return count


# ----------------------------------------------------------------------------- tuning
@dataclass
class KernelResult:
    name: str
    layers: list[str]
    weight: int
    default: float | None          # seconds of the default schedule (None: measured remotely)
    tuned: float | None
    rule: str = "none"             # the default schedule's rule
    trials: int = 0
    failures: int = 0
    first_error: str | None = None
    keep: bool = False
    prior: int = 0                  # trials of earlier runs (records are resumed)
    seeds: int = 0                  # other CPUs' records measured here as starting candidates

    @property
    def best(self):
        return self.tuned if self.keep and self.tuned else self.default

    @property
    def untuned(self):              # the name before tuning started from the defaults
        return self.default


@dataclass
class TuneResult:
    records: Path
    target: str
    kernels: list[KernelResult] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = "trials"        # why the search ended: trials, budget, interrupted
    first_trial_s: float | None = None    # seconds from start to the first measured candidate (a default)
    first_search_s: float | None = None   # ... to the first measured candidate of the search
    seeds: int = 0

    def table(self) -> str:
        rows = [("kernel", "layers", "default ms", "tuned ms", "speedup", "trials", "failed", "kept")]
        for k in self.kernels:
            speed = f"{k.default / k.tuned:.2f}x" if k.default and k.tuned else "-"
            rows.append((k.name, ",".join(k.layers), _ms(k.default), _ms(k.tuned), speed, str(k.trials),
                         str(k.failures), "tuned" if k.keep else "default"))
        before = sum((k.default or 0) * k.weight for k in self.kernels)
        after = sum((k.best or 0) * k.weight for k in self.kernels)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        why = {"trials": "", "budget": " (budget spent)", "interrupted": " (interrupted: records and verdicts kept)"}
        if before:
            lines.append(f"network (sum of kernels): default {before * 1e3:.3f} ms -> {after * 1e3:.3f} ms"
                         + (f" ({before / after:.2f}x)" if after else "") + f"; tuning took {self.seconds:.0f} s"
                         + why[self.stopped])
        else:               # measured remotely: the defaults were not timed
            lines.append(f"network (sum of tuned kernels, measured remotely): {after * 1e3:.3f} ms; "
                         f"tuning took {self.seconds:.0f} s" + why[self.stopped])
        if self.first_trial_s is not None:
            lines.append(f"first measured candidate after {self.first_trial_s:.1f} s"
                         + (f", first of the search after {self.first_search_s:.1f} s" if self.first_search_s else "")
                         + (f"; {self.seeds} seed records of other record sets measured here" if self.seeds else ""))
        lines.append(f"records: {self.records}")
        return "\n".join(lines)


def _ms(seconds):
    return f"{seconds * 1e3:.3f}" if seconds else "-"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (builders): what a run costs on an idle machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Progress:
    """The bar on stderr: trials (or seconds of the budget) and what is happening right now."""

    def __init__(self, state, total_trials, budget, enabled, desc):
        from tqdm import tqdm
        self.state, self.budget = state, budget
        if budget:
            self.bar = tqdm(total=round(budget), desc=desc, unit="s", disable=not enabled, file=sys.stderr,
                            dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} s {postfix}")
        else:
            self.bar = tqdm(total=total_trials, desc=desc, unit="trial", disable=not enabled, file=sys.stderr,
                            dynamic_ncols=True)
        self.text = ""

    def _tick(self):
        if self.budget:
            self.bar.n = min(self.budget, time.time() - self.state["started"])

    def phase(self, text):
        self.text = text
        self._tick()
        self.bar.set_postfix_str(f"{self.state['trials']} trials, net ~{self.network() * 1e3:.3f} ms; {text}")

    def network(self):
        return sum(min(filter(None, (k.tuned, k.default)), default=0) * k.weight for k in self.state["kernels"])

    def measured(self, kernel, seconds, source, count=1):
        """Record one measured candidate (default, seed or search) in the history and the bar."""
        state = self.state
        if state["first_trial_s"] is None:
            state["first_trial_s"] = time.time() - state["started"]
        if source == "search" and state["first_search_s"] is None:
            state["first_search_s"] = time.time() - state["started"]
        if seconds is not None and source != "default":
            kernel.tuned = seconds if kernel.tuned is None else min(kernel.tuned, seconds)
        if source == "search":
            state["trials"] += count
            if not self.budget:
                self.bar.update(count)
        with open(state["history"], "a") as f:
            f.write(json.dumps({"kernel": kernel.name, "trials": kernel.prior + kernel.trials, "best_s": kernel.tuned,
                                "default_s": kernel.default, "network_s": self.network(), "source": source,
                                "elapsed_s": round(time.time() - state["started"], 3), "cpu_s": round(cpu_seconds(), 3),
                                "t": time.time()}) + "\n")
        self.phase(f"{kernel.name}: best {_ms(kernel.tuned or kernel.default)} ms")

    def close(self):
        self._tick()
        self.bar.close()


def _progress_callback(progress, state):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            kernel = state["kernels"][task_id]
            best = None
            for built, ran in zip(builder_results, runner_results):
                kernel.trials += 1
                error = built.error_msg or ran.error_msg
                secs = [float(s) for s in (ran.run_secs or [])]
                if error or not secs or min(secs) >= 1e9:
                    kernel.failures += 1
                    kernel.first_error = kernel.first_error or (error or "no time measured")
                    continue
                seconds = float(np.median(secs))
                best = seconds if best is None else min(best, seconds)
            progress.measured(kernel, best, "search", len(runner_results))

    return Progress()


def _announcing_builder(inner, progress, state):
    """The builder, saying on the bar what it builds (a round takes seconds on 2 cores)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import PyBuilder

    @derived_object
    class Announced(PyBuilder):
        def build(self, build_inputs):
            progress.phase(f"building {len(build_inputs)} candidates of {state['current']}")
            results = inner.build(build_inputs)
            progress.phase(f"measuring {len(build_inputs)} candidates of {state['current']}")
            return results

    return Announced()


def _scheduler(state, progress, alpha=0.2, window=3):
    """MetaSchedule's gradient task scheduler (Zheng et al., Ansor), in Python so that it can:
    stop at the budget or at Ctrl-C between rounds; join each round as soon as it is sent (the
    first results show at once, instead of after one round of every kernel); and start from each
    kernel's measured default time, so the first rounds already go where the network's time is,
    with no round-robin warm-up over kernels that take no time."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

    kernels = state["kernels"]

    @derived_object
    class Gradient(PyTaskScheduler):
        def __init__(self):
            super().__init__()
            self.history = [[k.tuned or k.default] if (k.tuned or k.default) else [] for k in kernels]
            self.running = None
            self.round_started, self.round_s, self.rounds = time.time(), 0.0, 0
            self.rng = np.random.default_rng(state["seed"])

        def _join(self):
            outer, task_id = self._outer(), self.running
            self.running = None
            record = outer.tasks_[task_id]
            if record.is_terminated or record.runner_futures is None:
                return
            state["current"] = kernels[task_id].name
            progress.phase(f"measuring {kernels[task_id].name}")
            results = _ffi_api.TaskSchedulerJoinRunningTask(outer, task_id)
            secs = [float(np.median([float(s) for s in r.run_secs])) for r in results
                    if r.error_msg is None and r.run_secs]
            best = min([*secs, *self.history[task_id][-1:]], default=None)
            if best is not None:
                self.history[task_id].append(best)

        def _gradient(self, i):
            h, w = self.history[i], window
            if not h:
                return float("inf")          # never measured: measure it first
            n, best = len(h), h[-1]
            g1 = (h[-1 - w] - best) / w if n >= 1 + w else 0.0
            return (alpha * g1 + (1 - alpha) * best / n) * kernels[i].weight

        def next_task_id(self) -> int:
            if self.running is not None:
                self._join()
                self.round_s = time.time() - self.round_started
            # the first round always runs; then stop where the next one would end past the budget
            # more often than not
            if (state["stop"] is None and state["deadline"] and self.rounds
                    and time.time() + self.round_s / 2 >= state["deadline"]):
                state["stop"] = "budget"
            if state["stop"] is not None:
                return -1
            alive = [i for i, record in enumerate(self._outer().tasks_) if not record.is_terminated]
            if not alive:
                return -1
            grads = [self._gradient(i) for i in alive]
            top = max(grads)
            best = [i for i, g in zip(alive, grads) if g == top]
            task_id = int(best[self.rng.integers(len(best))]) if len(best) > 1 else best[0]
            self.running, self.round_started = task_id, time.time()
            self.rounds += 1
            state["current"] = kernels[task_id].name
            progress.phase(f"searching {kernels[task_id].name}'s schedules")
            return task_id

    return Gradient()


class _StopOnInterrupt:
    """Ctrl-C during the search ends it after the current round (records and verdicts kept);
    a second Ctrl-C stops at once."""

    def __init__(self, state):
        self.state, self.previous = state, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.state["stop"] == "interrupted":
            raise KeyboardInterrupt
        self.state["stop"] = "interrupted"
        print("\ninterrupted: finishing this round, then writing the verdicts (Ctrl-C again to quit now)",
              file=sys.stderr)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _quiet_metaschedule():
    """MetaSchedule's own logs go to <records>/logs, not the terminal: it gives its console
    handler the level its logger has when tuning starts (and sets the logger to DEBUG after)."""
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.ERROR)


def _prepare_directory(directory: Path, info):
    recorded = read_target(directory)
    if recorded is not None and recorded["target"] != info.name:
        raise file_error(directory, f"holds records for {recorded['target']}, not {info.name}",
                         "give each target its own records directory (pass the other one with --seed-records)")
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / "target.json", json.dumps({"target": info.name, "config": str(info.target)}, indent=1))


def _seed_dirs(seed_records, info, directory, own_records: bool) -> list[Path]:
    dirs = []
    for item in seed_records or ():
        d = Path(item)
        if not (d / RECORDS).exists():
            raise file_error(d, f"no tuning records here ({RECORDS})", "--seed-records takes a directory `convc tune` wrote")
        read_target(d)
        dirs.append(d)
    if not own_records and not dirs and info.kind == "llvm":
        dirs = list(same_isa_sets(info).values())
    return [d for d in dirs if d.resolve() != directory.resolve()]


def tune(net, target: str = "llvm", trials: int | None = None, batch: int = 1, records=None,
         per_kernel: int | None = None, seed: int = 0, rpc: str | None = None, key: str | None = None,
         arch: str | None = None, progress: bool = True, plot: str | None = None, per_iter: int = 16,
         budget=None, seed_records=(), cost_model: str | Path | None = "auto",
         population: int = POPULATION) -> TuneResult:
    """Tune every fused kernel of `net`; records go to `records` (default schedules/<target>/).

    trials or budget ("10m", "90s", "1h", or seconds) bound the search (default: 200 trials).
    seed_records: other CPUs' records directories, measured here as starting candidates (the
    records of another CPU with the same vector ISA are used that way when `records` is new).
    cost_model: "auto" (the one saved in `records`, else a fresh XGBoost model), "fresh" or None,
    or a directory holding a saved model (cost_model.json/.npz) to start from."""
    from tvm.s_tir import meta_schedule as ms

    from .build import fuse, kernel_layers, make_target, prim_funcs, relax_module

    started = time.time()
    if trials is not None and budget is not None:
        raise ConvcError("give --trials or --budget, not both")
    seconds = parse_budget(budget) if budget is not None else None
    if trials is not None and (not isinstance(trials, int) or trials < 1):
        raise ConvcError(f"--trials must be at least 1, got {trials}")
    trials = trials if trials is not None else (10 ** 9 if seconds else 200)
    info = make_target(target, arch)
    runner = make_runner(info, rpc, key)
    directory = Path(records) if records else SCHEDULES / info.name
    _prepare_directory(directory, info)
    verdicts = load_verdicts(directory)
    preload_tensor_intrin()

    with info.target:     # the lowering depends on the target (max pooling's reducer on CUDA)
        mod = relax_module(net, batch)
    layers_of, _ = kernel_layers(mod, net)
    fused = fuse(mod)
    funcs = prim_funcs(fused)
    deploy = deployer(fused)
    tasks = {t.task_name: t for t in ms.relax_integration.extract_tasks(fused, info.target)}
    measure_here = rpc is None
    db = open_database(directory)
    own_records = any(db.has_workload(workload_key(funcs[name])[0]) for name in tasks)
    seed_dirs = _seed_dirs(seed_records, info, directory, own_records)

    kernels = [KernelResult(name, layers_of.get(name, [name]), int(task.weight), None, None,
                            prior=verdicts.get(workload_key(funcs[name])[1], {}).get("trials", 0))
               for name, task in tasks.items()]
    state = {"kernels": kernels, "current": None, "history": directory / HISTORY, "started": started,
             "deadline": started + seconds if seconds else None, "stop": None, "trials": 0,
             "first_trial_s": None, "first_search_s": None, "seed": seed}
    result = TuneResult(directory, info.name, kernels)
    bar = Progress(state, trials, seconds, progress, f"tuning {net.name}")
    model = None
    try:
        with _StopOnInterrupt(state):
            model = load_cost_model(directory, cost_model, info, bar)
            bar.phase("measuring the default schedules")
            for kernel in kernels:
                if state["stop"] is None:
                    _start_from_default(kernel, funcs[kernel.name], db, info, measure_here, bar, deploy)
            if seed_dirs and state["stop"] is None:
                result.seeds = seed_records_into(db, seed_dirs, kernels, funcs, info, bar, deploy)
            # the biggest share of the network's time first (ties: the scheduler's order)
            order = sorted(range(len(kernels)), key=lambda i: -(kernels[i].default or 0) * kernels[i].weight)
            kernels[:] = [kernels[i] for i in order]
            if measure_here:
                runner = make_runner(info, rpc, key, candidate_timeout(kernels))
            if state["stop"] is None:
                _search(ms, [tasks[k.name] for k in kernels], kernels, state, bar, db, runner, model, info,
                        directory, trials, per_kernel, per_iter, seed, population)
    finally:
        bar.close()
        if model is not None:
            save_cost_model(model, directory)
    result.stopped = state["stop"] or "trials"
    result.first_trial_s, result.first_search_s = state["first_trial_s"], state["first_search_s"]
    result.seconds = time.time() - started
    for kernel in kernels:
        _judge(kernel, funcs[kernel.name], db, info, measure_here, verdicts, directory, deploy)
        if kernel.trials and kernel.failures == kernel.trials:
            print(f"error: every candidate for kernel {kernel.name} failed; first error:\n{kernel.first_error}",
                  file=sys.stderr)
    if plot:
        plot_history(directory, plot)
    return result


def seed_records_into(db, seed_dirs, kernels, funcs, info, bar, deploy) -> int:
    names = ", ".join(Path(d).name for d in seed_dirs)
    bar.phase(f"measuring seed records of {names}")
    return seed_records(db, seed_dirs, kernels, funcs, info, bar, deploy)


def _start_from_default(kernel, func, db, info, measure_here, bar, deploy):
    """Measure the kernel's default schedule, as a build runs it, and store it as a record: the
    search's first candidate."""
    trace, scheduled, kernel.rule = default_trace(func, info.target)
    if not measure_here:
        return
    bar.phase(f"measuring the default schedule of {kernel.name}")
    kernel.default = time_kernel(deploy(kernel.name, scheduled if scheduled is not None else func),
                                 info.target, info.device)
    bar.measured(kernel, kernel.default, "default")
    if not stored_default(trace):
        return
    mod, _ = workload_key(func)
    workload = db.commit_workload(mod)
    known = {_trace_key(r.trace) for r in db.get_top_k(workload, 10 ** 6)}
    if _trace_key(trace) not in known:
        _commit(db, workload, trace, kernel.default, func, info.target)


def stored_default(trace) -> bool:
    """A default schedule goes into the records if its trace replays it (and it is not the empty
    trace of a kernel no rule takes: MetaSchedule ignores records without instructions)."""
    return trace is not None and len(trace.insts) > 0


def _search(ms, task_list, kernels, state, bar, db, runner, model, info, directory, trials, per_kernel,
            per_iter, seed, population):
    from tvm.s_tir.meta_schedule import _ffi_api
    cores = os.cpu_count() or 1
    builder = ms.builder.LocalBuilder(f_build=cuda_build if info.kind == "cuda" else fast_build,
                                      max_workers=cores, timeout_sec=120)
    # the progress first: the cost model's update (a retrain) comes after the results are shown
    callbacks = [_progress_callback(bar, state), *ms.measure_callback.MeasureCallback.create("default")]
    _quiet_metaschedule()
    strategy = ms.search_strategy.EvolutionarySearch(population_size=population)
    contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
        task_list, str(directory), strategy=strategy, num_threads=cores, seed=seed)
    _quiet_metaschedule()
    scheduler = _scheduler(state, bar)
    _ffi_api.TaskSchedulerTune(scheduler, contexts, [float(k.weight) for k in kernels], trials,
                               per_kernel or trials, max(1, min(per_iter, trials // len(kernels) or 1)),
                               _announcing_builder(builder, bar, state), runner, callbacks, db, model)


def _judge(kernel, func, db, info, measure_here, verdicts, directory, deploy):
    """Keep the best record only if it beats the default schedule, both measured here as a build
    runs them (weight re-layouts split out), in turns (the best of three rounds each, so a burst
    of load on a shared machine hurts neither).
    Kernels with no new trials keep a verdict already made against the default."""
    mod, key = workload_key(func)
    previous = verdicts.get(key, {})
    kernel.trials = previous.get("trials", 0) + kernel.trials
    if not (kernel.trials - previous.get("trials", 0) or kernel.seeds) and judged_against_default(previous):
        kernel.keep, kernel.tuned = previous["keep"], previous.get("tuned_s")
        kernel.default = kernel.default or previous.get("default_s")
        return
    record = db.query_tuning_record(mod, info.target, "main")
    if record is None:
        return
    schedule = _query_schedule(db, mod, info.target)
    if schedule is None:
        return
    trace, scheduled, _ = default_trace(func, info.target)
    if stored_default(trace) and _trace_key(record.trace) == _trace_key(trace):
        kernel.keep, kernel.tuned = False, None       # the best record is the default itself
        _write_verdict(kernel, key, previous, verdicts, directory)
        return
    if measure_here:
        default = Timer(deploy(kernel.name, scheduled if scheduled is not None else func), info.target, info.device)
        tuned = Timer(deploy(kernel.name, schedule.mod["main"].without_attr("global_symbol")), info.target,
                      info.device)
        rounds = [(default(), tuned()) for _ in range(3)]
        kernel.default = min(d for d, _ in rounds)
        kernel.tuned = min(t for _, t in rounds)
    else:
        kernel.tuned = float(np.median([float(s) for s in record.run_secs]))
    kernel.keep = kernel.default is None or kernel.tuned < KEEP_MARGIN * kernel.default
    _write_verdict(kernel, key, previous, verdicts, directory)


def _write_verdict(kernel, key, previous, verdicts, directory):
    verdicts[key] = {"kernel": kernel.name, "layers": kernel.layers, "default_s": kernel.default, "deployed": True,
                     "rule": kernel.rule, "tuned_s": kernel.tuned, "keep": kernel.keep, "trials": kernel.trials,
                     "failures": kernel.failures + previous.get("failures", 0)}
    _atomic_write(directory / VERDICTS, json.dumps(verdicts, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------- the cost model, kept
def _new_cost_model():
    from tvm.s_tir.meta_schedule.cost_model import XGBModel
    return XGBModel(num_tuning_cores=os.cpu_count() or 1)


def load_cost_model(directory: Path | None, cost_model, info=None, bar=None):
    """The XGBoost cost model to start from: "auto" is the one saved in the records directory (a
    resumed run), else a fresh one; None or "fresh": a fresh one; a directory: the model saved
    there (another run's, or one `benchmarks/pretrain_cost_model.py` fitted on record sets)."""
    model = _new_cost_model()
    if cost_model in (None, "fresh"):
        return model
    if cost_model == "auto":
        if directory is None or not (Path(directory) / MODEL_DATA).exists():
            return model
        source = Path(directory)
    else:
        source = Path(cost_model)
        if not (source / MODEL_DATA).exists():
            raise file_error(source, f"no saved cost model here ({MODEL_DATA})",
                             "give a records directory `convc tune` wrote, or one pretrain_cost_model.py wrote")
    if bar is not None:
        bar.phase(f"loading the cost model of {source}")
    return read_cost_model(model, source)


def read_cost_model(model, source: Path):
    """Load trees (XGBoost's JSON) and training data (.npz, no pickles) into an XGBModel."""
    import xgboost as xgb
    from tvm.s_tir.meta_schedule.cost_model.xgb_model import FeatureGroup
    try:
        with np.load(source / MODEL_DATA, allow_pickle=False) as data:
            groups, sizes, rows = data["groups"], data["sizes"], data["rows"]
            features, costs = data["features"], data["costs"]
        if not (len(groups) == len(sizes) and sizes.sum() == len(rows) == len(costs) and rows.sum() == len(features)):
            raise ValueError("its arrays do not agree in length")
        bounds = np.concatenate([[0], np.cumsum(rows)])
        per_candidate = [features[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        model.data.clear()
        at = 0
        for group, size in zip(groups, sizes):
            model.data[str(group)] = FeatureGroup(group_hash=str(group), features=per_candidate[at:at + size],
                                                  costs=costs[at:at + size].astype("float32"))
            at += size
        model.data_size = int(sizes.sum())
        model.booster = None
        if (source / MODEL_TREES).exists():
            booster = xgb.Booster()
            booster.load_model(str(source / MODEL_TREES))
            model.booster = booster
    except Exception as err:      # noqa: BLE001 - any damage: say which file, start fresh on request
        raise file_error(source / MODEL_DATA, f"the saved cost model does not load ({type(err).__name__}: "
                                              f"{str(err).splitlines()[0][:200] if str(err) else ''})",
                         f"delete {MODEL_DATA} and {MODEL_TREES} there; the next run starts a fresh model") from None
    return model


def save_cost_model(model, directory: Path):
    """Write the model beside the records (atomically: a kill leaves the previous one)."""
    keys, groups = zip(*[(k, g) for k, g in model.data.items() if len(g.costs)]) if model.data else ((), ())
    if not groups:
        return
    features = [np.asarray(f, dtype=np.float32).reshape(len(f), -1) for g in groups for f in g.features]
    width = max((f.shape[1] for f in features if f.size), default=0)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="cost_model", suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmp, groups=np.array([str(k) for k in keys]),
                        sizes=np.array([len(g.costs) for g in groups], dtype=np.int64),
                        rows=np.array([len(f) for f in features], dtype=np.int64),
                        features=np.concatenate([f if f.size else np.zeros((0, width), np.float32) for f in features]),
                        costs=np.concatenate([np.asarray(g.costs, dtype=np.float32) for g in groups]))
    os.chmod(tmp, 0o644)
    os.replace(tmp, directory / MODEL_DATA)
    if model.booster is not None:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="cost_model", suffix=".json")
        os.close(fd)
        model.booster.save_model(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / MODEL_TREES)


def _retrain(model):
    """XGBModel's own training step over all its data (it trains from scratch each time)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = [f for g in model.data.values() for f in g.features]
        ys = np.concatenate([np.divide(g.min_cost, g.costs, out=np.zeros_like(g.costs), where=g.costs != 0)
                             for g in model.data.values()])
    model._train(xs=xs, ys=ys)
    model.last_train_size = model.data_size


def pretrain_cost_model(directories, output: Path, exclude=frozenset()) -> int:
    """Fit a cost model on the records of `directories` (every CPU's), leaving out the workloads
    whose hash is in `exclude`; write it to `output`. Returns the number of candidates used."""
    import tvm_ffi
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    from tvm.target import Target
    model = _new_cost_model()
    for directory in directories:
        directory = Path(directory)
        target = Target(json.loads(read_target(directory)["config"]))
        db = open_database(directory, write=False)
        by_workload = {}
        for record in db.get_all_tuning_records():
            if record.run_secs:
                by_workload.setdefault(str(tvm_ffi.structural_hash(record.workload.mod)), []).append(record)
        for key, records in by_workload.items():
            if key in exclude:
                continue
            mod = records[0].workload.mod
            context = ms.TuneContext(mod=mod, target=target, num_threads=os.cpu_count() or 1, task_name=key)
            candidates, results = [], []
            for record in records:
                try:
                    sch = s_tir.Schedule(mod)
                    record.trace.apply_to_schedule(sch, remove_postproc=False)
                except Exception:     # noqa: BLE001
                    continue
                candidates.append(ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
                results.append(ms.runner.RunnerResult(run_secs=record.run_secs, error_msg=None))
            before = set(model.data)
            model.adaptive_training, model.last_train_size = True, 10 ** 12    # collect now, train once below
            model.update(context, candidates, results)
            for group in set(model.data) - before:      # one group per CPU and kernel: costs never mix CPUs
                renamed = f"{read_target(directory)['target']}-{group}"
                model.data[renamed] = model.data.pop(group)
                model.data[renamed].group_hash = renamed
    if not model.data:
        raise ConvcError("no records to fit a cost model on")
    _retrain(model)
    output.mkdir(parents=True, exist_ok=True)
    save_cost_model(model, output)
    return model.data_size


# ----------------------------------------------------------------------------- plots
def read_history(directory: Path) -> list[dict]:
    """history.jsonl's rows; unreadable lines (a torn write, an edit) are skipped and counted."""
    path = Path(directory) / HISTORY
    if not path.exists():
        raise file_error(directory, f"no tuning history ({HISTORY}) to plot", "run `convc tune` first")
    rows, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if (isinstance(row, dict) and isinstance(row.get("kernel"), str) and isinstance(row.get("trials"), int)
                    and isinstance(row.get("network_s"), (int, float))
                    and (row.get("best_s") is None or isinstance(row.get("best_s"), (int, float)))):
                rows.append(row)
                continue
        except ValueError:
            pass
        bad += 1
    if bad:
        print(f"warning: {path}: skipped {bad} unreadable line{'s' if bad > 1 else ''}", file=sys.stderr)
    if not rows:
        raise file_error(path, "has no readable tuning history to plot", "run `convc tune` to write it again")
    return rows


def plot_history(directory: Path, output) -> Path:
    """Best latency against trials: one line per kernel, and the network's estimated total."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(directory)
    fig, ax = plt.subplots(figsize=(8, 5))
    for kernel in dict.fromkeys(r["kernel"] for r in rows):
        own = [r for r in rows if r["kernel"] == kernel and r["best_s"]]
        if own:
            ax.plot([r["trials"] for r in own], [r["best_s"] * 1e3 for r in own], label=kernel, lw=1)
    # the estimate is complete once every default is measured: from the search's rows on
    search = [r for r in rows if r.get("source", "search") != "default" and r["network_s"] > 0]
    network = [(i + 1, r["network_s"] * 1e3) for i, r in enumerate(search)]
    ax2 = ax.twiny()
    if network:
        ax2.plot(*zip(*network), color="black", lw=2, label="network (estimate)")
    ax2.set_xlabel("measurement batches, all kernels (black: network estimate)")
    ax.set_xlabel("trials of that kernel")
    ax.set_ylabel("best latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save_figure(fig, plt, output)


def _search_curve(rows) -> tuple[list[float], list[int], list[float]]:
    """Minutes since the first run started, total trials so far, and the network estimate (ms),
    from the rows after the defaults (where the estimate is complete). A resumed directory's
    later runs continue the clock where the earlier ones stopped."""
    minutes, totals, estimates = [], [], []
    trials, offset, last = {}, 0.0, 0.0
    for row in rows:
        elapsed = float(row.get("elapsed_s") or 0.0)
        if elapsed + offset < last:           # a later run of the same directory
            offset = last
        last = elapsed + offset
        trials[row["kernel"]] = row["trials"]
        if row.get("source", "search") != "default" and row["network_s"] > 0:
            minutes.append(last / 60)
            totals.append(sum(trials.values()))
            estimates.append(row["network_s"] * 1e3)
    return minutes, totals, estimates


def plot_comparison(directories, output, labels=None) -> Path:
    """The network estimate of several tuning runs (one network each: with and without a cost
    model, 10 against 30 minutes), against wall time and against trials, in one figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels or []) + [Path(d).name for d in directories][len(labels or []):]
    curves = [_search_curve(read_history(Path(d))) for d in directories]
    fig, (by_time, by_trials) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for label, (minutes, totals, estimates) in zip(labels, curves):
        by_time.step(minutes, estimates, where="post", label=label, lw=1.5)
        by_trials.step(totals, estimates, where="post", label=label, lw=1.5)
    by_time.set_xlabel("minutes of tuning")
    by_trials.set_xlabel("trials (all kernels)")
    by_time.set_ylabel("network estimate, best so far (ms)")
    by_time.legend(fontsize=8)
    for ax in (by_time, by_trials):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, plt, output)


def _save_figure(fig, plt, output) -> Path:
    try:
        fig.savefig(output, dpi=120)
    except OSError as err:
        raise file_error(output, f"cannot write the plot: {err.strerror or err}") from None
    finally:
        plt.close(fig)
    return Path(output)


# ----------------------------------------------------------------------------- CLI verbs
def cmd_tune(args) -> int:
    from . import parse_file
    net = parse_file(args.file)
    result = tune(net, args.target, args.trials, args.batch, args.records, args.per_kernel, args.seed,
                  args.rpc, args.key, args.arch, plot=args.plot, budget=args.budget,
                  seed_records=args.seed_records, cost_model=args.cost_model)
    print(result.table())
    if args.plot:
        print(f"wrote {args.plot}")
    return 130 if result.stopped == "interrupted" else 0


def cmd_plot(args) -> int:
    if args.label and len(args.label) > len(args.records):
        raise ConvcError(f"{len(args.label)} --label for {len(args.records)} records directories")
    if len(args.records) == 1 and not args.label:
        print(f"wrote {plot_history(Path(args.records[0]), args.output)}")
    else:
        print(f"wrote {plot_comparison(args.records, args.output, args.label)}")
    return 0
