"""Stage 4-6: the checked network as one Relax module, fused, scheduled and built for a target.

    net -> relax_module (one call_tir per layer, from lower.py)
        -> fuse (AnnotateTIROpPattern, FuseOps, FuseTIR: conv + bias + neuron + elementwise)
        -> schedule (tuning records where present; DLight on CUDA for the rest)
        -> tvm.compile -> Module (callable; export/load)
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))   # before the runtime's pool starts

import numpy as np
import tvm
from tvm import relax

from .errors import ConvcError, Diagnostic, file_error
from .files import atomic_paths, check_output_path, elf_problem, os_reason, sha256, write_bytes_atomically
from .lower import LOWER
from .schedule import apply_default_schedules

META_FUNCTION = "convc_meta"
CUDA_ARCH = re.compile(r"sm_[1-9][0-9]{1,2}[a-z]?")
DTYPES = ("float32",)         # what the layers are lowered and checked for
INDEX_LIMIT = 2**31 - 1       # elements in one tensor: kernels index with int32
ALIGNMENT = 64          # AVX-512 code reads inputs with aligned loads: a plain numpy array is 16-aligned


# ----------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class TargetInfo:
    kind: str                 # "llvm" | "cuda"
    target: object            # tvm.target.Target
    name: str                 # for records directories: llvm-znver5, cuda-sm_90a

    @property
    def device(self):
        return tvm.cpu() if self.kind == "llvm" else tvm.cuda()


def make_target(kind: str = "llvm", arch: str | None = None) -> TargetInfo:
    if arch is not None and kind != "cuda":
        raise ConvcError(f"arch {arch!r} (--arch) applies to the cuda target only")
    if kind == "llvm":
        # from_device detects the CPU (e.g. znver5 with AVX-512); mcpu=native would silently give SSE.
        cfg = dict(tvm.target.Target.from_device(tvm.cpu()).export())
        cfg["num-cores"] = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
        target = tvm.target.Target(cfg)
        return TargetInfo("llvm", target, f"llvm-{cfg.get('mcpu', 'generic')}")
    if kind == "cuda":
        arch = arch or "sm_90a"
        if not isinstance(arch, str) or not CUDA_ARCH.fullmatch(arch):
            raise ConvcError(f"unknown CUDA architecture {arch!r}; give sm_XY as nvcc spells it, "
                             "e.g. sm_80, sm_86, sm_90a")
        target = tvm.target.Target({"kind": "cuda", "arch": arch, "max_shared_memory_per_block": 49152,
                                    "max_threads_per_block": 1024, "thread_warp_size": 32})
        return TargetInfo("cuda", target, f"cuda-{arch}")
    raise ConvcError(f"unknown target {kind!r}; convc builds for llvm (this CPU) and cuda")


# ----------------------------------------------------------------------------- relax
def relax_module(net, batch: int, dtype: str = "float32", all_outputs: bool = False) -> tvm.IRModule:
    """One `main(input, *params)`; each layer one call_tir named after the layer."""
    bb = relax.BlockBuilder()
    x = relax.Var(net.input_name, relax.TensorType((batch, *net.input_shape), dtype))
    pvars = {name: relax.Var(name, relax.TensorType(shape, dtype)) for name, shape in net.param_shapes().items()}
    with bb.function("main", [x, *pvars.values()]):
        with bb.dataflow():
            values = {net.input_name: x}
            for layer in net.layers:
                values[layer.name] = _emit_layer(bb, layer, [values[n] for n in layer.inputs], pvars)
            result = (relax.Tuple([values[layer.name] for layer in net.layers]) if all_outputs
                      else values[net.output.name])
            out = bb.emit_output(result)
        bb.emit_func_output(out)
    return bb.get()


def _emit_layer(bb, layer, inputs, pvars):
    lower = LOWER[layer.kind]
    if lower is None:                      # dropout: the input itself
        return inputs[0]
    suffixes = list(layer.spec.params(layer))
    count = len(inputs)

    def te_fn(*tensors):
        return lower(layer, list(tensors[:count]), dict(zip(suffixes, tensors[count:])))

    # Identical kernels (rnorm1, rnorm2 of one shape) share one PrimFunc: tuned once.
    return bb.emit_te(te_fn, *inputs, *[pvars[f"{layer.name}.{s}"] for s in suffixes],
                      primfunc_name_hint=layer.name)


# At most this many layers fuse into one kernel. LLVM's time on one function grows faster than
# its size: a chain of 400 elementwise layers fused 256 at a time (FuseOps' own cap) built in
# 29 s, 16 at a time in 0.9 s; no real network fuses more than a few layers into one kernel.
MAX_FUSED = 16
OPAQUE = 8                # relax OpPatternKind kOpaque: a kernel FuseOps never fuses again


def _fusion_context():
    """The current PassContext with FuseOps' group size capped at MAX_FUSED."""
    ctx = tvm.transform.PassContext.current()
    config = {**{k: v for k, v in ctx.config.items()}, "relax.FuseOps.max_depth": MAX_FUSED}
    return tvm.transform.PassContext(opt_level=ctx.opt_level, required_pass=list(ctx.required_pass),
                                     disabled_pass=list(ctx.disabled_pass), instruments=list(ctx.instruments),
                                     config=config)


def fuse(mod: tvm.IRModule) -> tvm.IRModule:
    """conv/local/fc + bias + neuron are one PrimFunc already; this fuses what follows them."""
    with _fusion_context():
        return tvm.transform.Sequential([
            relax.transform.AnnotateTIROpPattern(),   # without it FuseOps fuses nothing
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
        ])(mod)


def final_kernels(mod: tvm.IRModule) -> tvm.IRModule:
    """Mark every kernel opaque, so that tvm.compile's own pipeline (which runs FuseOps again)
    builds the kernels fuse() made and the report lists, instead of fusing them into ever
    larger ones (a chain of N elementwise layers became N/16 kernels of 16 x 16 layers)."""
    mod = mod.clone() if hasattr(mod, "clone") else mod
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            mod[gv] = func.with_attr("op_pattern", OPAQUE)
    return mod


def kernel_layers(mod: tvm.IRModule, net) -> tuple[dict[str, list[str]], dict[str, int]]:
    """{kernel name: [layer names it computes]} and {kernel name: launches per run}, read off
    the module between FuseOps and FuseTIR.

    Before fusion, main calls one PrimFunc per computing layer, in layer order (a PrimFunc may
    serve several layers of the same shape); fusion groups those calls into kernels.
    """
    queues: dict[str, list[str]] = {}
    computing = [layer.name for layer in net.layers if LOWER[layer.kind] is not None]
    for target, layer in zip(_call_tir_targets(mod["main"]), computing):
        queues.setdefault(target, []).append(layer)
    with _fusion_context():
        grouped = tvm.transform.Sequential([relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps()])(mod)
    kernels, launches = {}, {}
    for kernel, targets in _call_tir_targets(grouped["main"], calls_of=grouped):
        kernels.setdefault(kernel, []).extend(queues[t].pop(0) for t in targets if queues.get(t))
        launches[kernel] = launches.get(kernel, 0) + 1
    return kernels, launches


def _call_tir_targets(func, calls_of=None) -> list:
    """The PrimFuncs a function calls, in order. With `calls_of` (the module): (kernel, [PrimFuncs])
    per call, where a call of a fused function lists the PrimFuncs fused into it."""
    found = []
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call):
                continue
            if getattr(value.op, "name", "") == "relax.call_tir":
                name = value.args[0].name_hint
                found.append(name if calls_of is None else (name, [name]))
            elif calls_of is not None and isinstance(value.op, relax.GlobalVar):
                found.append((value.op.name_hint, _call_tir_targets(calls_of[value.op])))
    return found


def prim_funcs(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


PACKED, PACKING = "_prepacked", "_prepack"     # SplitLayoutRewritePreproc's function-name suffixes


def kernel_functions(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    """The compute kernels by kernel name: `<kernel>_prepacked` (a kernel whose weights were
    re-laid out) is <kernel>; the weight-packing functions `<param>_prepack` are left out: with
    bound weights they are folded at build time, otherwise they run once per call."""
    funcs = prim_funcs(mod)
    return {(name[:-len(PACKED)] if name.endswith(PACKED) else name): f for name, f in funcs.items()
            if not name.endswith(PACKING)}


def _with_meta(mod: tvm.IRModule, meta: dict) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    with bb.function(META_FUNCTION, []):
        bb.emit_func_output(tvm.ir.StringImm(json.dumps(meta)))
    mod = mod.clone() if hasattr(mod, "clone") else mod
    mod[META_FUNCTION] = bb.get()[META_FUNCTION]
    return mod


def _n(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


# ----------------------------------------------------------------------------- compile
@dataclass
class BuildReport:
    kernels: dict[str, list[str]]               # kernel -> layers
    launches: dict[str, int] = field(default_factory=dict)     # kernel -> launches per run
    tuned: list[str] = field(default_factory=list)
    untuned: list[str] = field(default_factory=list)
    rules: dict[str, str] = field(default_factory=dict)         # untuned kernel -> default rule name
    records: list[str] = field(default_factory=list)
    hint: str | None = None        # what to do when this target has no records (tuning.no_records_hint)
    seconds: float = 0.0

    def describe(self, net) -> str:
        computing = [layer for layer in net.layers if LOWER[layer.kind] is not None]
        launches = sum(self.launches.values())
        fused = len(computing) - launches
        lines = [f"{_n(launches, 'kernel launch', 'kernel launches')} for {_n(len(net.layers), 'layer')} "
                 f"({_n(len(self.kernels), 'distinct kernel')}; {_n(fused, 'layer')} fused into their producers; "
                 f"dropout is free), built in {self.seconds:.2f} s"]
        if self.records:
            lines.append(f"tuning records: {', '.join(self.records)}")
            lines.append(f"tuned: {_n(len(self.tuned), 'kernel')}; untuned (default schedule): {len(self.untuned)}"
                         + (f" [{', '.join(self.untuned)}]" if self.untuned else ""))
        else:
            lines.append(self.hint or "no tuning records: every kernel uses the default schedule (run `convc tune`)")
        lines += [f"  {kernel:<24} {'tuned' if kernel in self.tuned else 'default ' + self.rules.get(kernel, 'none')}"
                  f"  ({', '.join(layers)})" for kernel, layers in self.kernels.items()]
        return "\n".join(lines)


def compile(net, target: str = "llvm", batch: int = 1, params=None, bind: bool | None = None,
            records="auto", arch: str | None = None, all_outputs: bool = False, dtype: str = "float32",
            verbose: bool = False):
    """Build `net` for `target` at a fixed batch.

    params + bind (default True when params are given): embed the weights as constants, so the
    module is called as m(x). Without them it is called as m(x, params).
    records: "auto" (the shipped and local records for this target), a directory, a list of
    directories, or None (untuned).
    """
    started = time.perf_counter()
    _check_compile_arguments(net, target, batch, records, dtype)
    info = make_target(target, arch)
    fused, report, meta = lower_network(net, info, batch, params, bind, records, all_outputs, dtype)
    try:
        ex = tvm.compile(final_kernels(fused), info.target, relax_pipeline=relax.get_default_pipeline(info.target))
    except Exception as err:   # a compiler bug is not the user's fault, but say which network and target
        raise RuntimeError(f"TVM failed to build {net.name} for {info.name}: {err}") from err
    report.seconds = time.perf_counter() - started
    module = Module(ex, net, meta, info)
    module.report = report
    if verbose:
        print(report.describe(net))
    return module


def _check_compile_arguments(net, target, batch, records, dtype):
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConvcError(f"batch must be a positive integer, got {batch!r}")
    if dtype not in DTYPES:
        raise ConvcError(f"dtype {dtype!r} is not supported; convc builds {', '.join(DTYPES)} networks")
    if not _records_ok(records):
        raise ConvcError(f"records must be \"auto\", None, a directory or a list of directories, got {records!r}")
    check_batch_fits(net, batch, host=target == "llvm")


def _records_ok(records) -> bool:
    if records is None or isinstance(records, (str, os.PathLike)):
        return True
    return isinstance(records, (list, tuple)) and all(isinstance(r, (str, os.PathLike)) for r in records)


def check_batch_fits(net, batch: int, host: bool = True, bytes_per_value: int = 4):
    """A batch whose tensors overflow 32-bit indices, or (on this machine) whose layer outputs
    exceed its memory, is refused before any work."""
    largest = max([math.prod(net.input_shape)] + [math.prod(layer.out_shape) for layer in net.layers])
    if batch * largest > INDEX_LIMIT:
        raise ConvcError(Diagnostic(f"batch {batch} makes a tensor of {batch * largest:,} values; kernels index "
                                    f"at most {INDEX_LIMIT:,}", None,
                                    f"use a batch of at most {max(1, INDEX_LIMIT // largest):,}"))
    if not host:
        return
    need = batch * bytes_per_value * (math.prod(net.input_shape) + sum(math.prod(l.out_shape) for l in net.layers))
    have = _memory_bytes()
    if have and need > have:
        raise ConvcError(Diagnostic(f"batch {batch} needs about {need / 2**30:.1f} GiB for the layer outputs; "
                                    f"this machine has {have / 2**30:.1f} GiB", None, "use a smaller batch"))


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def lower_network(net, info: TargetInfo, batch: int, params=None, bind=None, records="auto",
                  all_outputs=False, dtype="float32"):
    """net -> the fused, scheduled IRModule that tvm.compile takes, its BuildReport and metadata."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConvcError(f"batch must be a positive integer, got {batch!r}")
    bind = params is not None if bind is None else bind
    if bind and params is None:
        params = net.init_params(0)
    checked = net.check_params(params) if bind else None
    with info.target:           # the lowering of max pooling depends on the target family (lower.py)
        mod = relax_module(net, batch, dtype, all_outputs)
    if bind:
        mod = relax.transform.BindParams("main", {k: tvm.runtime.tensor(np.ascontiguousarray(v, dtype=dtype))
                                                  for k, v in checked.items()})(mod)
    report = BuildReport(*kernel_layers(mod, net))
    fused = _apply_records(fuse(mod), info, records, batch, report)
    fused, report.rules = apply_default_schedules(fused, info.target, skip=set(report.tuned))
    fused = split_weight_packing(fused, bind)
    meta = {"convc": 1, "network": net.text, "filename": net.filename, "batch": batch, "target": info.name,
            "target_kind": info.kind, "dtype": dtype, "bound": bool(bind), "all_outputs": all_outputs,
            "params": {k: list(v) for k, v in net.param_shapes().items()}}
    return _with_meta(fused, meta), report, meta


def split_weight_packing(mod: tvm.IRModule, bound: bool) -> tvm.IRModule:
    """Schedules that re-lay weights out (OIHW -> OIHW16o) mark that copy as a layout-rewrite
    block; it becomes its own kernel, which FoldConstant runs once at build time when the
    weights are bound. Weights passed per call are packed by that kernel inside the module."""
    mod = relax.transform.SplitLayoutRewritePreproc()(mod)
    return relax.transform.FoldConstant()(mod) if bound else mod


def _apply_records(fused, info, records, batch, report):
    if records is None:
        report.untuned = list(prim_funcs(fused))
        return fused
    from .tuning import apply_records
    return apply_records(fused, info, records, batch, report)


# ----------------------------------------------------------------------------- the module
class Module:
    """A built network: m(x) or m(x, params) -> numpy; m.export(path); convc.load(path).

    Threads: any number of threads may call one Module at once. The compiled library and the
    bound weights are shared (read-only); each calling thread gets its own VM (its own
    registers and scratch memory), created on its first call.
    """

    def __init__(self, executable, net, meta: dict, info: TargetInfo | None = None, library=None):
        self.executable, self.net, self.meta = executable, net, meta
        self.batch, self.bound = meta["batch"], meta["bound"]
        self.target = meta["target"]
        self.kind = meta["target_kind"]
        self.info = info
        self.report = None
        self._library = library
        self._lock = threading.Lock()
        self._per_thread = threading.local()

    # -- running --------------------------------------------------------------
    @property
    def device(self):
        return tvm.cpu() if self.kind == "llvm" else tvm.cuda()

    def _require_device(self):
        if self.kind == "cuda" and not tvm.cuda().exist:
            raise ConvcError("this module runs on CUDA, and this machine has no CUDA device; "
                             "export it (m.export(path) or convc build -o) and run it where there is one")

    @property
    def vm(self):
        """This thread's VM over the shared library."""
        vm = getattr(self._per_thread, "vm", None)
        if vm is None:
            self._require_device()
            with self._lock:          # jit() links once; VM creation reads shared state
                if self._library is None:
                    self._library = self.executable.jit()
                vm = relax.VirtualMachine(self._library, self.device)
            self._per_thread.vm = vm
        return vm

    def arguments(self, x, params=None) -> list:
        self._require_device()
        args = [self._input(x)]
        if self.bound:
            if params is not None:
                raise ConvcError("this module was built with its parameters bound: call m(x) without params "
                                 "(convc run: leave out --params)")
        else:
            if params is None and not self.net.param_shapes():
                params = {}                # a network without parameters is called as m(x)
            if params is None:
                raise ConvcError("this module takes its parameters at run time: call m(x, params) "
                                 "(convc run: --params FILE.npz)")
            if not hasattr(params, "keys"):
                raise ConvcError(f"params must be a dict of arrays, got {type(params).__name__}")
            checked = self.net.check_params({k: _plain(v) for k, v in params.items()})
            args += [self._array(checked[name], name) for name in self.net.param_shapes()]
        return args

    def __call__(self, x, params=None):
        args = self.arguments(x, params)
        out = self.vm["main"](*args)
        if self.meta.get("all_outputs"):
            return {layer.name: out[i].numpy() for i, layer in enumerate(self.net.layers)}
        return out.numpy()

    def time(self, x, params=None, number: int | None = None, repeat: int = 5) -> list[float]:
        """Seconds per run, one figure per repeat (each the mean of `number` runs; by default as
        many runs as fill about 0.1 s, after one warm-up run)."""
        args = self.arguments(x, params)
        if number is None:
            once = self.vm.time_evaluator("main", self.device, number=1, repeat=1)(*args).mean
            number = max(1, int(0.1 / max(once, 1e-6)))
        evaluator = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return list(evaluator(*args).results)

    def _input(self, x):
        x = _plain(x)
        self.net.check_input(x, self.batch)
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise self.net.source.error(f"input {self.net.input_name!r} has dtype {x.dtype}, expected "
                                        f"{self.meta['dtype']}", self.net.input_pos, "convert it: x.astype(np.float32)")
        return self._array(x, self.net.input_name)

    def _array(self, value, name):
        """numpy -> something the VM reads safely: zero-copy only when aligned, contiguous and
        writeable (DLPack refuses read-only buffers); anything else is copied."""
        dtype = self.meta["dtype"]
        value = np.asarray(value)
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise ConvcError(f"{name} has dtype {value.dtype}; expected {dtype} numbers")
        if (self.kind == "llvm" and value.dtype == dtype and value.flags.c_contiguous and value.flags.writeable
                and value.ctypes.data % ALIGNMENT == 0):
            return value
        return tvm.runtime.tensor(np.ascontiguousarray(value, dtype=dtype), self.device)

    # -- shipping ----------------------------------------------------------------
    def export(self, path) -> Path:
        """Write a shared library (network text, batch, target and param shapes embedded in it)
        and a `PATH.json` sidecar with the same metadata plus the library's size and SHA-256.
        Both are written to temporary files and renamed into place: on failure (disk full,
        permission) the previous pair is left intact and a ConvcError says why."""
        if self.executable is None:
            raise ConvcError("a loaded module cannot be exported again; copy its file (and its .json) instead")
        path = Path(path)
        sidecar = _sidecar(path)
        with atomic_paths(path, sidecar, what="module", suffix=path.suffix or ".so") as (tmp_lib, tmp_side):
            self.executable.export_library(str(tmp_lib))
            data = tmp_lib.read_bytes()
            record = {**self.meta, "library": {"size": len(data), "sha256": sha256(data)}}
            tmp_side.write_text(json.dumps(record, indent=1))
        return path

    def __repr__(self):
        return (f"<convc.Module {self.net.name} target={self.target} batch={self.batch} "
                f"params={'bound' if self.bound else 'per call'}>")


def _is_torch(value) -> bool:
    return type(value).__module__.startswith("torch")


def _plain(value):
    """A user's array as numpy: torch tensors detached (requires_grad), moved to the CPU, and
    converted from dtypes numpy lacks (bfloat16) to float32; anything else through np.asarray."""
    if _is_torch(value):
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        return value.numpy()
    return value if isinstance(value, np.ndarray) else np.asarray(value)


def _sidecar(path: Path) -> Path:
    return Path(str(path) + ".json")


def load(path) -> Module:
    """Load a module written by Module.export / `convc build`, in any process.

    A module is native code: load only files you trust. The sidecar's size and SHA-256 are
    checked before the dynamic loader sees the bytes (a copy in a private temporary file, so
    the file cannot change between the check and the load); a file cut short is refused even
    without a sidecar. The metadata embedded in the library is authoritative: a sidecar that
    disagrees with it is an error naming the difference.
    """
    from . import parse
    path = Path(path)
    data = _read_module_bytes(path)
    sidecar = _read_sidecar(path)
    _verify(path, data, sidecar)
    library = _load_library(path, data, sidecar)
    meta = _embedded_meta(path, library, sidecar)
    if sidecar is not None:
        _compare_meta(path, meta, sidecar)
    net = parse(meta["network"], filename=meta.get("filename") or str(path))
    return Module(None, net, meta, library=library)


def _read_module_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise file_error(path, "no such file", "build one with `convc build net.conv -o net.so`") from None
    except IsADirectoryError:
        raise file_error(path, "is a directory, not a module file") from None
    except OSError as err:
        raise file_error(path, f"cannot read the module: {os_reason(err) or err.strerror}") from None


def _read_sidecar(path: Path) -> dict | None:
    sidecar = _sidecar(path)
    if not sidecar.exists():
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:
        raise file_error(sidecar, f"the module's sidecar is not readable JSON ({str(err)[:120]})",
                         f"delete it to load {path.name} from its embedded metadata, or rebuild the module") from None
    if not isinstance(meta, dict):
        raise file_error(sidecar, "the module's sidecar is not a JSON object", "rebuild the module")
    return meta


def _verify(path: Path, data: bytes, sidecar: dict | None):
    library = (sidecar or {}).get("library")
    if isinstance(library, dict):
        recorded = library.get("size")
        if recorded != len(data):
            recorded = f"{recorded:,}" if isinstance(recorded, int) else repr(recorded)
            raise file_error(path, f"the module has {len(data):,} bytes, its sidecar records {recorded}: "
                                   "the file was cut short or replaced", "rebuild it with `convc build`")
        if library.get("sha256") != sha256(data):
            raise file_error(path, "the module's SHA-256 differs from the one its sidecar records: "
                                   "the file was modified", "rebuild it with `convc build`")
    problem = elf_problem(data)
    if problem:
        raise file_error(path, f"not a module convc can load: {problem}", "rebuild it with `convc build`")


def _load_library(path: Path, data: bytes, sidecar: dict | None):
    """The library loaded from a private copy of the bytes just checked."""
    with tempfile.TemporaryDirectory(prefix="convc-load-") as private:
        copy = Path(private) / "module.so"
        copy.write_bytes(data)
        try:
            return tvm.runtime.load_module(str(copy))
        except Exception as err:
            if sidecar and sidecar.get("target_kind") == "cuda":
                raise file_error(path, "this CUDA module can only be loaded on a machine with a CUDA device") from None
            raise file_error(path, f"not a module convc can load ({str(err).splitlines()[0][:200]})") from None


def _embedded_meta(path: Path, library, sidecar) -> dict:
    try:
        vm = relax.VirtualMachine(library, tvm.cpu())
        meta = json.loads(str(vm[META_FUNCTION]()))
    except Exception:
        raise file_error(path, "this library was not built by convc (no convc metadata)") from None
    if not isinstance(meta, dict) or "network" not in meta:
        raise file_error(path, "this library's convc metadata is incomplete")
    return meta


def _compare_meta(path: Path, embedded: dict, sidecar: dict):
    keys = sorted(set(embedded) | set(sidecar) - {"library"})
    differ = [k for k in keys if embedded.get(k) != sidecar.get(k)]
    if differ:
        raise file_error(_sidecar(path), f"the sidecar disagrees with the metadata embedded in {path.name} "
                                         f"on {', '.join(repr(k) for k in differ)}",
                         "the embedded copy is authoritative: delete or regenerate the sidecar (rebuild the module)")


# ----------------------------------------------------------------------------- CLI verbs
def _load_params(path, net=None):
    """An .npz of NAME.weight arrays; never unpickles. Every member is read here, so a
    truncated or corrupt archive is reported now, as an error about this file."""
    if path is None:
        return None
    help = "save them with numpy.savez(path, **{'conv1.weight': w, ...})"
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise file_error(path, "no such file") from None
    except Exception as err:     # noqa: BLE001 - numpy raises many kinds for a damaged file
        raise file_error(path, f"cannot read parameters from it ({_short(err)})", help) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise file_error(path, "holds one array, not a set of named parameters (.npz)", help)
    try:
        with data:
            return {k: data[k] for k in data.files}
    except Exception as err:     # noqa: BLE001 - zipfile, zlib, EOFError, ValueError for pickles
        raise file_error(path, f"cannot read parameters from it ({_short(err)})", help) from None


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]


def _load_array(path):
    try:
        value = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise file_error(path, "no such file") from None
    except Exception as err:     # noqa: BLE001
        raise file_error(path, f"cannot read an array from it ({_short(err)})", "save it with numpy.save") from None
    if isinstance(value, np.lib.npyio.NpzFile):
        value.close()
        raise file_error(path, "is an .npz archive; the input is one array (.npy)", "save it with numpy.save")
    return value


def _records_arg(args):
    """--records DIR adds directories, searched before the shipped schedules/<target>/."""
    if getattr(args, "no_records", False):
        if args.records:
            raise ConvcError("--no-records and --records contradict each other; give one")
        return None
    return [*args.records, "auto"] if args.records else "auto"


def cmd_build(args) -> int:
    from . import parse_file
    net = parse_file(args.file)
    check_output_path(args.output, "module")      # before the build, not after it
    params = _load_params(args.params)
    m = compile(net, args.target, args.batch, params=params, records=_records_arg(args), arch=args.arch)
    print(m.report.describe(net))
    path = m.export(args.output)
    print(f"wrote {path} ({path.stat().st_size:,} bytes; target {m.target}, batch {m.batch}, "
          f"params {'bound' if m.bound else 'passed per call'}) and {path}.json")
    return 0


def cmd_run(args) -> int:
    if args.output:
        check_output_path(args.output)        # before the work, not after it
    m = load(args.module)
    x = _load_array(args.input)
    params = _load_params(args.params)
    y = m(x, params)
    if args.output:       # exactly the path given (np.save(path) would add .npy), written atomically
        write_bytes_atomically(args.output, lambda f: np.save(f, y))
        print(f"wrote {args.output}: shape {'x'.join(map(str, y.shape))}")
    else:
        print(np.array2string(np.asarray(y), threshold=50))
    if args.time:
        runs = sorted(m.time(x, params))
        print(f"median {runs[len(runs) // 2] * 1e3:.3f} ms over {len(runs)} repeats")
    return 0


def cmd_emit(args) -> int:
    from . import parse_file
    from .emit import emit
    net = parse_file(args.file)
    print(emit(net, args.target, args.batch, layer=args.layer, tir=args.tir, arch=args.arch,
               records=_records_arg(args)))
    return 0
