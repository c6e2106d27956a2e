"""Stage 4-6: the checked network as one Relax module, fused, scheduled and built for a target.

    net -> relax_module (one call_tir per layer, from lower.py)
        -> fuse (AnnotateTIROpPattern, FuseOps, FuseTIR: conv + bias + neuron + elementwise)
        -> schedule (tuning records where present; DLight on CUDA for the rest)
        -> tvm.compile -> Module (callable; export/load)
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))   # before the runtime's pool starts

import numpy as np
import tvm
from tvm import relax

from .errors import ConvcError, file_error
from .lower import LOWER
from .schedule import apply_default_schedules

META_FUNCTION = "convc_meta"
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
    if kind == "llvm":
        # from_device detects the CPU (e.g. znver5 with AVX-512); mcpu=native would silently give SSE.
        cfg = dict(tvm.target.Target.from_device(tvm.cpu()).export())
        cfg["num-cores"] = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
        target = tvm.target.Target(cfg)
        return TargetInfo("llvm", target, f"llvm-{cfg.get('mcpu', 'generic')}")
    if kind == "cuda":
        arch = arch or "sm_90a"
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


def fuse(mod: tvm.IRModule) -> tvm.IRModule:
    """conv/local/fc + bias + neuron are one PrimFunc already; this fuses what follows them."""
    return tvm.transform.Sequential([
        relax.transform.AnnotateTIROpPattern(),   # without it FuseOps fuses nothing
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])(mod)


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
    info = make_target(target, arch)
    fused, report, meta = lower_network(net, info, batch, params, bind, records, all_outputs, dtype)
    try:
        ex = tvm.compile(fused, info.target, relax_pipeline=relax.get_default_pipeline(info.target))
    except Exception as err:   # a compiler bug is not the user's fault, but say which network and target
        raise RuntimeError(f"TVM failed to build {net.name} for {info.name}: {err}") from err
    report.seconds = time.perf_counter() - started
    module = Module(ex, net, meta, info)
    module.report = report
    if verbose:
        print(report.describe(net))
    return module


def lower_network(net, info: TargetInfo, batch: int, params=None, bind=None, records="auto",
                  all_outputs=False, dtype="float32"):
    """net -> the fused, scheduled IRModule that tvm.compile takes, its BuildReport and metadata."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConvcError(f"batch must be a positive integer, got {batch!r}")
    bind = params is not None if bind is None else bind
    if bind and params is None:
        params = net.init_params(0)
    checked = net.check_params(params) if bind else None
    mod = relax_module(net, batch, dtype, all_outputs)
    if bind:
        mod = relax.transform.BindParams("main", {k: tvm.runtime.tensor(np.ascontiguousarray(v, dtype=dtype))
                                                  for k, v in checked.items()})(mod)
    report = BuildReport(*kernel_layers(mod, net))
    fused = _apply_records(fuse(mod), info, records, batch, report)
    fused, report.rules = apply_default_schedules(fused, info.target, skip=set(report.tuned))
    meta = {"convc": 1, "network": net.text, "filename": net.filename, "batch": batch, "target": info.name,
            "target_kind": info.kind, "dtype": dtype, "bound": bool(bind), "all_outputs": all_outputs,
            "params": {k: list(v) for k, v in net.param_shapes().items()}}
    return _with_meta(fused, meta), report, meta


def _apply_records(fused, info, records, batch, report):
    if records is None:
        report.untuned = list(prim_funcs(fused))
        return fused
    from .tuning import apply_records
    return apply_records(fused, info, records, batch, report)


# ----------------------------------------------------------------------------- the module
class Module:
    """A built network: m(x) or m(x, params) -> numpy; m.export(path); convc.load(path)."""

    def __init__(self, executable, net, meta: dict, info: TargetInfo | None = None, library=None):
        self.executable, self.net, self.meta = executable, net, meta
        self.batch, self.bound = meta["batch"], meta["bound"]
        self.target = meta["target"]
        self.kind = meta["target_kind"]
        self.info = info
        self.report = None
        self._vm = None
        self._library = library

    # -- running --------------------------------------------------------------
    @property
    def device(self):
        return tvm.cpu() if self.kind == "llvm" else tvm.cuda()

    @property
    def vm(self):
        if self._vm is None:
            if self.kind == "cuda" and not tvm.cuda().exist:
                raise ConvcError("this module runs on CUDA, and this machine has no CUDA device; "
                                 "export it (m.export(path) or convc build -o) and run it where there is one")
            source = self._library if self._library is not None else self.executable
            self._vm = relax.VirtualMachine(source, self.device)
        return self._vm

    def arguments(self, x, params=None) -> list:
        args = [self._input(x)]
        if self.bound:
            if params is not None:
                raise ConvcError("this module was built with its parameters bound: call m(x) without params "
                                 "(convc run: leave out --params)")
        else:
            if params is None:
                raise ConvcError("this module takes its parameters at run time: call m(x, params) "
                                 "(convc run: --params FILE.npz)")
            checked = self.net.check_params(params)
            args += [self._array(checked[name], name) for name in self.net.param_shapes()]
        return args

    def __call__(self, x, params=None):
        out = self.vm["main"](*self.arguments(x, params))
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
        x = _as_numpy_or_torch(x)
        self.net.check_input(x, self.batch)
        dtype = str(x.dtype).replace("torch.", "")
        if not any(dtype.startswith(k) for k in ("float", "int", "uint", "bfloat")):
            raise self.net.source.error(f"input {self.net.input_name!r} has dtype {dtype}, expected "
                                        f"{self.meta['dtype']}", self.net.input_pos, "convert it: x.astype(np.float32)")
        return self._array(x, self.net.input_name)

    def _array(self, value, name):
        """numpy/torch -> something the VM reads safely: zero-copy only when aligned and contiguous."""
        dtype = self.meta["dtype"]
        if _is_torch(value):
            if _torch_zero_copy_ok(value, dtype) and self.kind == "llvm":
                return value
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise ConvcError(f"{name} has dtype {value.dtype}; expected {dtype} numbers")
        if (self.kind == "llvm" and value.dtype == dtype and value.flags.c_contiguous
                and value.ctypes.data % ALIGNMENT == 0):
            return value
        return tvm.runtime.tensor(np.ascontiguousarray(value, dtype=dtype), self.device)

    # -- shipping ----------------------------------------------------------------
    def export(self, path) -> Path:
        """Write a shared library (network text, batch, target and param shapes embedded in it)
        and a `PATH.json` sidecar with the same metadata, readable without TVM."""
        path = Path(path)
        if self.executable is None:
            raise ConvcError("a loaded module cannot be exported again; copy its file instead")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.executable.export_library(str(path))
        Path(str(path) + ".json").write_text(json.dumps(self.meta, indent=1))
        return path

    def __repr__(self):
        return (f"<convc.Module {self.net.name} target={self.target} batch={self.batch} "
                f"params={'bound' if self.bound else 'per call'}>")


def _is_torch(value) -> bool:
    return type(value).__module__.startswith("torch")


def _torch_zero_copy_ok(t, dtype) -> bool:
    return (str(t.dtype) == f"torch.{dtype}" and t.device.type == "cpu" and t.is_contiguous()
            and not t.requires_grad and t.data_ptr() % ALIGNMENT == 0)


def _as_numpy_or_torch(x):
    return x if _is_torch(x) or isinstance(x, np.ndarray) else np.asarray(x)


def load(path) -> Module:
    """Load a module written by Module.export / `convc build`, in any process."""
    from . import parse
    path = Path(path)
    if not path.exists():
        raise file_error(path, "no such file", "build one with `convc build net.conv -o net.so`")
    sidecar = Path(str(path) + ".json")
    meta = None
    if sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            meta = None
    try:
        library = tvm.runtime.load_module(str(path))
    except Exception as err:
        if meta and meta.get("target_kind") == "cuda":
            raise file_error(path, "this CUDA module can only be loaded on a machine with a CUDA device") from None
        raise file_error(path, f"not a module convc can load ({str(err).splitlines()[0][:200]})") from None
    if meta is None:   # the sidecar is a convenience; the embedded copy is authoritative
        try:
            vm = relax.VirtualMachine(library, tvm.cpu())
            meta = json.loads(str(vm[META_FUNCTION]()))
        except Exception:
            raise file_error(path, "this library was not built by convc (no convc metadata)") from None
    net = parse(meta["network"], filename=meta.get("filename", str(path)))
    return Module(None, net, meta, library=library)


# ----------------------------------------------------------------------------- CLI verbs
def _load_params(path, net=None):
    """An .npz of NAME.weight arrays; never unpickles."""
    if path is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise file_error(path, "no such file") from None
    except (ValueError, OSError) as err:
        raise file_error(path, f"cannot read parameters from it ({err})",
                         "save them with numpy.savez(path, **{'conv1.weight': w, ...})") from None


def _load_array(path):
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise file_error(path, "no such file") from None
    except (ValueError, OSError) as err:
        raise file_error(path, f"cannot read an array from it ({err})", "save it with numpy.save") from None


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
    params = _load_params(args.params)
    m = compile(net, args.target, args.batch, params=params, records=_records_arg(args), arch=args.arch)
    print(m.report.describe(net))
    path = m.export(args.output)
    print(f"wrote {path} ({path.stat().st_size:,} bytes; target {m.target}, batch {m.batch}, "
          f"params {'bound' if m.bound else 'passed per call'}) and {path}.json")
    return 0


def cmd_run(args) -> int:
    m = load(args.module)
    x = _load_array(args.input)
    params = _load_params(args.params)
    y = m(x, params)
    if args.output:
        np.save(args.output, y)
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
