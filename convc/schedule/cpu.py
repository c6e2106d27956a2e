"""Default schedule rules for CPUs (llvm: x86 AVX2 / AVX-512, aarch64 NEON).

Vector width, register count and core count come from the target (`isa`), never from a list
of CPU names.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import Rule


@dataclass(frozen=True)
class ISA:
    lanes: int            # fp32 lanes per vector register
    registers: int        # vector registers
    cores: int
    embedded_broadcast: bool = False   # AVX-512: an FMA can broadcast a scalar memory operand


def isa(target) -> ISA:
    """fp32 lanes and vector registers from the target's features (LLVM's view of -mcpu/-mattr)."""
    from tvm.target import codegen
    arch = str(target.attrs.get("mtriple", ""))
    mcpu = str(target.attrs.get("mcpu", ""))
    attrs = [str(a) for a in target.attrs.get("mattr", [])]
    cores = int(target.attrs.get("num-cores", 1))
    if arch.startswith("aarch64") or arch.startswith("arm64"):
        return ISA(4, 32, cores)
    features = set(attrs)
    try:
        features |= {f for f in codegen.llvm_get_cpu_features(target) if f}
    except Exception:    # noqa: BLE001 - older LLVM: fall back to -mattr
        pass
    if "avx512f" in features or "+avx512f" in features:
        return ISA(16, 32, cores, embedded_broadcast=True)
    if "avx2" in features or "+avx2" in features or "avx" in features:
        return ISA(8, 16, cores)
    return ISA(4, 16, cores)



# ----------------------------------------------------------------------------- helpers
def _block_names(sch) -> list[str]:
    return [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]


def _spatial_block(sch, name: str, isa: ISA):
    """A prologue/epilogue block on its own: outer loops parallel, innermost vectorised."""
    loops = sch.get_loops(sch.get_sblock(name))
    if len(loops) >= 3:
        sch.parallel(sch.fuse(*loops[:2]))
    elif len(loops) == 2:
        sch.parallel(loops[0])
    if loops and len(loops) >= 2:
        sch.vectorize(loops[-1])


def _inline_epilogue(sch, main: str) -> list[str]:
    """Inline the elementwise chain after `main` into its last block; the blocks left, in order."""
    names = _block_names(sch)
    after = names[names.index(main) + 1:]
    for name in after[:-1]:
        try:
            sch.compute_inline(sch.get_sblock(name))
        except Exception:   # noqa: BLE001 - not inlinable (several consumers): keep it
            pass
    names = _block_names(sch)
    return names[names.index(main) + 1:]


# ----------------------------------------------------------------------------- conv
@dataclass(frozen=True)
class ConvShape:
    batch: int
    filters: int
    out_h: int
    out_w: int
    per_group: int        # filters per group (fg)
    reduce: tuple         # (cg, kh, kw)


def conv_shape(sch, block_name: str) -> ConvShape | None:
    """Read a `<layer>_conv` block: output (n, f, oh, ow), reduce extents, filters per group."""
    block = sch.get(sch.get_sblock(block_name))
    dom = [int(iv.dom.extent) for iv in block.iter_vars]
    if len(dom) != 7:
        return None
    n, f, oh, ow, cg, kh, kw = dom
    weight = block.reads[-1].source
    if len(weight.shape) != 4:
        return None
    groups = _groups(block, f, cg)
    return ConvShape(n, f, oh, ow, f // groups, (cg, kh, kw))


def _groups(block, filters: int, per_group_channels: int) -> int:
    """G from the padded input's channel count: C = G * cg."""
    channels = int(block.reads[0].source.shape[1])
    return max(1, channels // per_group_channels) if per_group_channels else 1


def register_block(shape: ConvShape, isa: ISA) -> tuple[int, int] | None:
    """(vectors of output channels, output columns) held in registers, or None if no vector of
    output channels fits inside one group.

    Live registers: cols x nv accumulators, nv weight vectors, and one broadcast input pixel,
    except with AVX-512's embedded broadcast (nv = 1: the pixel is the FMA's memory operand; with
    nv > 1 LLVM hoists the shared broadcasts and spills). One register is left spare: on AVX2
    5 columns x 2 vectors ran at 1.08x oneDNN, 6 x 2 spilled (0.70x). Among the blocks that fit,
    the one with the least time per output: blocks x (cols + per-block overhead), a guarded tail
    (cols not dividing the width) costing 15% more.
    """
    best, best_cost = None, float("inf")
    for nv in (2, 1):
        if shape.per_group % (isa.lanes * nv) or (isa.embedded_broadcast and nv > 1):
            continue
        spare = 0 if isa.embedded_broadcast else 1
        for cols in range(1, min(shape.out_w, 28) + 1):
            if cols * nv + nv + spare > isa.registers - 2:
                break
            blocks = -(-shape.out_w // cols)
            cost = blocks * (cols + 4) / nv * (1.0 if shape.out_w % cols == 0 else 1.05)
            if cost < best_cost - 1e-9:
                best, best_cost = (nv, cols), cost
    return best


class DirectConv(Rule):
    """Register-blocked direct conv (oneDNN's jit conv, TOPI's conv2d_NCHWc fallback).

    Loop nest: parallel over (batch, output-channel blocks, output rows); then blocks of
    `cols` output columns; reduce over (c, ky, kx); innermost `cols` x `nv` vector
    accumulators: `cols` broadcasts of input pixels, `nv` vector loads of weights and
    cols x nv FMAs per step. Weights are re-laid out as OIHW[nv*lanes]o once (a
    layout-rewrite block that the build folds into a constant for bound weights). The
    accumulators live in registers; bias, neuron and fused elementwise layers are applied
    as each block is written back.
    """
    name = "cpu.DirectConv"

    def apply(self, func, target, tunable=False):
        from tvm import s_tir
        from . import inspect_kernel
        kernel = inspect_kernel(func)
        if kernel.kind != "conv":
            return None
        sch = s_tir.Schedule(func)
        shape = conv_shape(sch, kernel.main)
        target_isa = isa(target)
        choice = register_block(shape, target_isa) if shape else None
        if choice is None:
            return None
        nv, cols = choice
        ob = nv * target_isa.lanes
        conv = sch.get_sblock(kernel.main)
        weight = sch.cache_read(conv, len(sch.get(conv).reads) - 1, "global")
        sch.annotate(weight, "meta_schedule.layout_rewrite_preproc", True)
        sch.transform_layout(conv, ("read", len(sch.get(conv).reads) - 1),
                             lambda o, c, y, x: (o // ob, c, y, x, o % ob))
        b, o, y, x, rc, ry, rx = sch.get_loops(conv)
        oo, ov, ol = sch.split(o, [None, nv, target_isa.lanes])
        xo, xi = sch.split(x, [None, cols])
        sch.reorder(b, oo, y, xo, rc, ry, rx, ov, xi, ol)
        outer = sch.fuse(b, oo, y)
        sch.set_scope(conv, 0, "local")
        # accumulators with the channel vector innermost: registers, not a gather
        sch.transform_layout(conv, ("write", 0), lambda n, o, y, x: (n, o // ob, y, x, o % ob))
        epilogue = _inline_epilogue(sch, kernel.main)
        for name in epilogue:          # bias, neuron, fused layers: applied per register block
            sch.reverse_compute_at(sch.get_sblock(name), xo)
        sch.unroll(xi)
        sch.unroll(ov)
        sch.vectorize(ol)
        sch.parallel(outer)
        init = sch.decompose_reduction(conv, rc)
        sch.vectorize(sch.get_loops(init)[-1])
        for name in _block_names(sch)[:_block_names(sch).index(kernel.main + "_init")]:
            if name != weight_name(sch, weight):
                _spatial_block(sch, name, target_isa)
        return sch


def weight_name(sch, block) -> str:
    return sch.get(block).name_hint


class ConvRows(Rule):
    """Any conv the register-blocked rule does not take (depthwise, fewer filters per group than
    a vector): parallel over (batch, filter, output row); each row accumulated in a local buffer,
    vectorised along the output columns, reduced over (c, ky, kx) outside the column loop, so a
    stride-1 conv reads contiguous input vectors and broadcasts one weight."""
    name = "cpu.ConvRows"

    def apply(self, func, target, tunable=False):
        from tvm import s_tir
        from . import inspect_kernel
        kernel = inspect_kernel(func)
        if kernel.kind != "conv":
            return None
        sch = s_tir.Schedule(func)
        if conv_shape(sch, kernel.main) is None:
            return None
        conv = sch.get_sblock(kernel.main)
        b, o, y, x, rc, ry, rx = sch.get_loops(conv)
        sch.reorder(b, o, y, rc, ry, rx, x)
        outer = sch.fuse(b, o, y)
        sch.set_scope(conv, 0, "local")
        for name in _inline_epilogue(sch, kernel.main):
            block = sch.get_sblock(name)
            sch.reverse_compute_at(block, outer)
            sch.vectorize(sch.get_loops(block)[-1])
        sch.vectorize(x)
        sch.parallel(outer)
        init = sch.decompose_reduction(conv, rc)
        sch.vectorize(sch.get_loops(init)[-1])
        names = _block_names(sch)
        for name in names[:names.index(kernel.main + "_init")]:
            _spatial_block(sch, name, isa(target))
        return sch


RULES: list[Rule] = [DirectConv(), ConvRows()]
