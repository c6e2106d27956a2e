"""`convc emit`: the code convc generates — TIR, LLVM assembly or CUDA source — whole or per layer."""
from __future__ import annotations

import re

import tvm
from tvm import relax

from .build import META_FUNCTION, final_kernels, kernel_functions, lower_network, make_target
from .errors import ConvcError


def kernel_of(report, net, layer_name: str) -> str:
    """The kernel that computes a layer (fusion may have merged it with its neighbours)."""
    if layer_name not in {layer.name for layer in net.layers}:
        raise ConvcError(f"no layer named {layer_name!r} in {net.name}; layers: "
                         + ", ".join(layer.name for layer in net.layers))
    for kernel, layers in report.kernels.items():
        if layer_name in layers:
            return kernel
    raise ConvcError(f"layer {layer_name!r} has no kernel of its own (dropout is the identity at inference)")


def emit(net, target: str = "llvm", batch: int = 1, layer: str | None = None, tir: bool = False,
         arch: str | None = None, records="auto") -> str:
    info = make_target(target, arch)
    fused, report, _ = lower_network(net, info, batch, records=records)
    kernel = kernel_of(report, net, layer) if layer else None
    if tir:
        funcs = kernel_functions(fused)
        chosen = [kernel] if kernel else list(funcs)
        return "\n\n".join(f"# kernel {name}: layers {', '.join(report.kernels.get(name, [name]))}\n"
                           + funcs[name].script() for name in chosen)
    del fused[META_FUNCTION]
    ex = tvm.compile(final_kernels(fused), info.target, relax_pipeline=relax.get_default_pipeline(info.target))
    host = ex.mod.imports[0]
    if info.kind == "cuda":
        source = host.imports[0].inspect_source()
        return _cuda_function(source, kernel) if kernel else source
    source = host.inspect_source("asm")
    return _asm_functions(source, kernel) if kernel else source


def _cuda_function(source: str, kernel: str) -> str:
    """The __global__ functions generated for one kernel (a kernel may launch several)."""
    starts = [m.start() for m in re.finditer(r'extern "C" __global__', source)]
    chunks = [source[a:b] for a, b in zip(starts, starts[1:] + [len(source)])]
    picked = [c for c in chunks if re.search(rf"\b{re.escape(kernel)}(_kernel\w*)?\(", c.split("{", 1)[0])
              and not c.split("{", 1)[0].rstrip().endswith(";")]      # definitions, not declarations
    return "\n".join(picked) or source


def _asm_functions(source: str, kernel: str) -> str:
    """The assembly of the symbols named after one kernel (its packed entry and compute body)."""
    lines, out, keep = source.splitlines(), [], False
    for line in lines:
        label = re.match(r"^([\w.$]+):", line)
        if label and not label.group(1).startswith(".L"):
            keep = kernel in label.group(1)
        if keep:
            out.append(line)
    return "\n".join(out) or source
