"""Default schedule rules for CPUs (llvm: x86 AVX2 / AVX-512, aarch64 NEON).

Vector width, register count and core count come from the target (`isa`), never from a list
of CPU names.
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.tirx.analysis import undefined_vars

from ..lower import batch_innermost
from . import Rule, inspect_kernel


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



# ----------------------------------------------------------------------------- conv helpers
def _conv_epilogue(sch, main: str) -> list[str]:
    """The elementwise chain after `main` inlined into its last block (`_inline_epilogue`);
    the names of the blocks left after `main`, in order."""
    _inline_epilogue(sch, main)
    names = [_name(sch, b) for b in _root_blocks(sch)]
    return names[names.index(main) + 1:]


def _conv_prologue(sch, main: str, lanes: int, skip: str | None = None):
    """The blocks before the conv's (decomposed) reduction, padding above all: each its own
    parallel, vectorised pass (a bounds test inside the hot loop halves its speed)."""
    names = [_name(sch, b) for b in _root_blocks(sch)]
    for name in names[:names.index(main + "_init")]:
        if name != skip:
            parallel_vectorize(sch, sch.get_sblock(name), lanes)


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


def _conv_kernel(func):
    """(kernel, schedule, ConvShape) of a conv kernel; shape None for anything else."""
    kernel = inspect_kernel(func)
    sch = s_tir.Schedule(func)
    shape = conv_shape(sch, kernel.main) if kernel.kind == "conv" else None
    return kernel, sch, shape


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
    name = "direct_conv"

    def apply(self, func, target, tunable=False):
        kernel, sch, shape = _conv_kernel(func)
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
        epilogue = _conv_epilogue(sch, kernel.main)
        for name in epilogue:          # bias, neuron, fused layers: applied per register block
            sch.reverse_compute_at(sch.get_sblock(name), xo)
        sch.unroll(xi)
        sch.unroll(ov)
        sch.vectorize(ol)
        sch.parallel(outer)
        init = sch.decompose_reduction(conv, rc)
        sch.vectorize(sch.get_loops(init)[-1])
        _conv_prologue(sch, kernel.main, target_isa.lanes, skip=_name(sch, weight))
        return sch


class ConvRows(Rule):
    """Any conv the register-blocked rule does not take (depthwise, fewer filters per group than
    a vector): parallel over (batch, filter, output row); each row accumulated in a local buffer,
    vectorised along the output columns, reduced over (c, ky, kx) outside the column loop, so a
    stride-1 conv reads contiguous input vectors and broadcasts one weight."""
    name = "conv_rows"

    def apply(self, func, target, tunable=False):
        kernel, sch, shape = _conv_kernel(func)
        if shape is None:
            return None
        conv = sch.get_sblock(kernel.main)
        b, o, y, x, rc, ry, rx = sch.get_loops(conv)
        sch.reorder(b, o, y, rc, ry, rx, x)
        outer = sch.fuse(b, o, y)
        sch.set_scope(conv, 0, "local")
        for name in _conv_epilogue(sch, kernel.main):
            block = sch.get_sblock(name)
            sch.reverse_compute_at(block, outer)
            sch.vectorize(sch.get_loops(block)[-1])
        sch.vectorize(x)
        sch.parallel(outer)
        init = sch.decompose_reduction(conv, rc)
        sch.vectorize(sch.get_loops(init)[-1])
        _conv_prologue(sch, kernel.main, isa(target).lanes)
        return sch


CONV_RULES: list[Rule] = [DirectConv(), ConvRows()]

# --- rules: non-conv kernels ---------------------------------------------------------------
# Each rule: recognise (kernel kind from inspect_kernel, or the blocks' names / iteration kinds),
# then schedule from the output backwards: the last block's loops are tiled (parallel outside,
# vector inside), the main reduction is computed at the output's tile (`compute_at`) so its
# intermediate buffer shrinks to one tile, and its reduction loops go outside the vector loop.
# Every rule returns None when its schedule fails, so the next rule (finally `parallel`) takes
# the kernel: a default schedule is never wrong, at worst slow.




_sblock_realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")

PARALLEL_MIN_WORK = 4096       # iterations below which a thread-pool launch costs more than it saves


def vector_factor(extent: int, lanes: int) -> int:
    """How many iterations of a contiguous loop one vector (or a few) covers, without a tail:
    the lanes if they divide the extent; the whole loop if it is short (LLVM splits a
    <27 x float> into legal pieces); else a divisor of the extent between 1x and 4x the lanes;
    else the lanes, with a guarded tail."""
    if extent % lanes == 0:
        return lanes
    if extent <= 4 * lanes:
        return extent
    for d in range(4 * lanes, lanes - 1, -1):
        if extent % d == 0:
            return d
    return lanes


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _root_blocks(sch) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _name(sch, block) -> str:
    return sch.get(block).name_hint


def _is_spatial(sch, block) -> bool:
    return all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def _try(fn, *args) -> bool:
    try:
        fn(*args)
        return True
    except Exception:     # noqa: BLE001 - a primitive that does not apply leaves the schedule as it was
        return False


def _inline_epilogue(sch, main: str):
    """Inline the elementwise blocks between the main block and the last one (bias, neuron,
    batchnorm, add ...) into the last: one output block remains. Returns it."""
    blocks = _root_blocks(sch)
    names = [_name(sch, b) for b in blocks]
    after = blocks[names.index(main) + 1:]
    for block in after[:-1]:
        _try(sch.compute_inline, block)
    return after[-1] if after else sch.get_sblock(main)


def _inline_producers(sch, main: str, keep=()):
    """Inline the spatial blocks before the main block (flatten, padding) into their consumers."""
    blocks = _root_blocks(sch)
    names = [_name(sch, b) for b in blocks]
    for block, name in zip(blocks[:names.index(main)], names):
        if name not in keep and _is_spatial(sch, block):
            _try(sch.compute_inline, block)


def _parallel(sch, loop, work: int):
    if work >= PARALLEL_MIN_WORK and _extent(sch, loop) > 1:
        sch.parallel(loop)


def parallel_vectorize(sch, block, lanes: int, inner_dims: int = 2):
    """Loops of a spatial block: the trailing `inner_dims` fused and vectorised (the contiguous
    run of an NCHW tensor is H*W), the rest fused and run in parallel. Returns (outer, vector)."""
    loops = sch.get_loops(block)
    if not loops:
        return None, None
    inner_dims = max(1, min(inner_dims, len(loops) - 1)) if len(loops) > 1 else 1
    inner = sch.fuse(*loops[-inner_dims:]) if inner_dims > 1 else loops[-1]
    extent = _extent(sch, inner)
    total = extent * _product(sch, loops[:-inner_dims])
    v = vector_factor(extent, lanes)
    outer_inner, vec = sch.split(inner, [None, v])
    outer = sch.fuse(*loops[:-inner_dims], outer_inner) if len(loops) > inner_dims else outer_inner
    sch.vectorize(vec)
    _parallel(sch, outer, total)
    return outer, vec


def _product(sch, loops) -> int:
    out = 1
    for loop in loops:
        out *= _extent(sch, loop)
    return out


def _reduce_loop_vars(sch, block) -> list:
    """The loop variables that the block's reduction iterators are bound to."""
    realize = _sblock_realize(sch, block)
    found = []
    for iv, value in zip(sch.get(block).iter_vars, realize.iter_values):
        if iv.iter_type == tirx.IterVar.CommReduce:
            found += undefined_vars(value)
    return found


def _loops_by_kind(sch, block, loops) -> tuple[list, list]:
    """(spatial, reduction) loops among `loops` of a block, each list in loop order."""
    reducing = _reduce_loop_vars(sch, block)
    is_reduce = [any(v.same_as(sch.get(lp).loop_var) for v in reducing) for lp in loops]
    return ([lp for lp, r in zip(loops, is_reduce) if not r], [lp for lp, r in zip(loops, is_reduce) if r])


def _reduction_inside(sch, block, depth: int, lanes: int, fuse_spatial: bool = True):
    """A reduction block placed (compute_at) `depth` loops deep: its own spatial loops are fused
    (or only the last one split) into vectors; the reduction loops go between the outer part and
    the vector, so one vector of accumulators stays in registers while the window is summed;
    the initialisation is split off."""
    spatial, reduce = _loops_by_kind(sch, block, sch.get_loops(block)[depth:])
    vec = None
    if spatial:
        if fuse_spatial and len(spatial) > 1:
            spatial = [sch.fuse(*spatial)]
        last = spatial[-1]
        outer, vec = sch.split(last, [None, vector_factor(_extent(sch, last), lanes)])
        sch.reorder(*spatial[:-1], outer, *reduce, vec)
        sch.vectorize(vec)
    if reduce:
        sch.decompose_reduction(block, reduce[0])
    return vec


class Injective(Rule):
    """Every block spatial (padding, concat, activations, batchnorm, add ...): intermediate
    blocks inlined into the last; the last parallel over N*C and vectorised along H*W."""
    name = "injective"

    def apply(self, func, target, tunable=False):
        sch = s_tir.Schedule(func)
        blocks = _root_blocks(sch)
        if not blocks or not all(_is_spatial(sch, b) for b in blocks):
            return None
        for block in blocks[:-1]:
            _try(sch.compute_inline, block)
        lanes = isa(target).lanes
        if not all(_try(parallel_vectorize, sch, block, lanes) for block in _root_blocks(sch)):
            return None
        return sch


def _guarded(schedule):
    """A rule's apply from a schedule function: None when the kernel is not the rule's (the
    function returns None) or when a primitive refuses (the next rule takes the kernel)."""
    def apply(self, func, target, tunable=False):
        try:
            return schedule(func, inspect_kernel(func), isa(target))
        except Exception:     # noqa: BLE001 - a rule that cannot schedule a kernel passes it on
            return None
    return apply


# ------------------------------------------------------------------ pooling
def _window_blocks(sch, kernel):
    """(output block with the epilogue inlined, the main block, its zero-padding producers): the
    blocks the window kernels (pooling, deconv) schedule."""
    out = _inline_epilogue(sch, kernel.main)
    main = sch.get_sblock(kernel.main)
    return out, main, [b for b in sch.get_producers(main) if _is_spatial(sch, b)]


def schedule_pool(func, kernel, cpu: ISA):
    """Max/avg pooling, any window, stride, padding, ceil mode. Output rows in parallel over
    (n, c, row); the padded input rows one output row needs are copied once (no bounds test
    in the window loop); the window reduction runs with the output columns as vector lanes.
    Global pooling (1x1 output) takes its vector lanes from the channels instead."""
    if kernel.kind != "pool":
        return None
    sch = s_tir.Schedule(func)
    out, red, pads = _window_blocks(sch, kernel)
    n, c, y, z = sch.get_loops(out)
    if _extent(sch, y) * _extent(sch, z) == 1:
        co, cv = sch.split(c, [None, vector_factor(_extent(sch, c), cpu.lanes)])
        sch.reorder(n, co, y, z, cv)
        outer = sch.fuse(n, co)
        sch.vectorize(cv)
        _parallel(sch, outer, _extent(sch, outer) * 64)   # parallel before decompose_reduction
        for pad in pads:
            sch.compute_inline(pad)
        sch.compute_at(red, outer)
        _reduction_inside(sch, red, 1, cpu.lanes)
        return sch
    rows = sch.fuse(n, c, y)
    zo, zv = sch.split(z, [None, vector_factor(_extent(sch, z), cpu.lanes)])
    sch.vectorize(zv)
    _parallel(sch, rows, _extent(sch, rows) * _extent(sch, zo) * _extent(sch, zv))
    sch.compute_at(red, zo)
    _reduction_inside(sch, red, 2, cpu.lanes)
    for pad in pads:
        sch.compute_at(pad, rows)
    return sch


class Pool(Rule):
    name = "pool"
    apply = _guarded(schedule_pool)


# ------------------------------------------------------------------ LRN
def schedule_lrn(func, kernel, cpu: ISA):
    """Local response normalisation. One (n, c) plane per parallel iteration: the window sum of
    squares is accumulated into a plane buffer with H*W as vector lanes (across: the `size`
    neighbouring channel planes; within: the separable row then column sums of lower.py), then
    the output x * (k + a*sum)^-beta is one vectorised pass over the plane."""
    if kernel.kind != "lrn":
        return None
    sch = s_tir.Schedule(func)
    out = _inline_epilogue(sch, kernel.main)
    red = sch.get_sblock(kernel.main)
    n, c, y, z = sch.get_loops(out)
    plane = sch.fuse(n, c)
    hw = sch.fuse(y, z)
    size = _extent(sch, hw)
    _, vec = sch.split(hw, [None, vector_factor(size, cpu.lanes)])
    sch.vectorize(vec)
    _parallel(sch, plane, _extent(sch, plane) * size)
    chain = _chain_before(sch, red)
    sch.compute_at(red, plane)
    for block in reversed(chain):      # within: padded squares, then row sums, per plane
        sch.compute_at(block, plane)
    _reduction_inside(sch, red, 1, cpu.lanes, fuse_spatial=True)
    for block in chain:
        if _is_spatial(sch, block):
            loops = sch.get_loops(block)[1:]
            if len(loops) > 1:
                sch.fuse(*loops)
        else:
            _reduction_inside(sch, block, 1, cpu.lanes, fuse_spatial=False)
    return sch


def _chain_before(sch, block) -> list:
    """The blocks of this kernel that `block` depends on, nearest last."""
    chain, frontier = [], [block]
    while frontier:
        producers = [p for b in frontier for p in sch.get_producers(b)]
        chain = producers + chain
        frontier = producers
    return chain


class LRN(Rule):
    name = "lrn"
    apply = _guarded(schedule_lrn)


# ------------------------------------------------------------------ softmax
SOFTMAX_BLOCKS = ("softmax_maxelem", "softmax_exp", "softmax_expsum", "softmax_norm")


def schedule_softmax(func, kernel, cpu: ISA):
    """Softmax over channels (topi's max, exp, sum, normalise). One (n, row) per parallel
    iteration: max and sum over channels with the row's W positions as vector lanes, exp once
    per element into a row buffer, the normalised row written as vectors. A 2-D input
    (after fc) vectorises the normalisation over channels; the two reductions stay serial."""
    sch = s_tir.Schedule(func)
    names = [_name(sch, b) for b in _root_blocks(sch)]
    found = {key: next((n for n in names if n.endswith(key)), None) for key in SOFTMAX_BLOCKS}
    if not all(found.values()):
        return None
    out = _inline_epilogue(sch, found["softmax_norm"])
    if _name(sch, out) != found["softmax_norm"]:          # an elementwise layer fused after it
        sch.compute_inline(sch.get_sblock(found["softmax_norm"]))
    loops = sch.get_loops(out)
    if len(loops) == 4:
        n, c, y, z = loops
        sch.reorder(n, y, c, z)
        rows = sch.fuse(n, y)
        _, vec = sch.split(z, [None, vector_factor(_extent(sch, z), cpu.lanes)])
    else:
        rows, inner = loops[0], sch.fuse(*loops[1:]) if len(loops) > 2 else loops[1]
        _, vec = sch.split(inner, [None, vector_factor(_extent(sch, inner), cpu.lanes)])
    sch.vectorize(vec)
    _parallel(sch, rows, _product(sch, sch.get_loops(out)))
    for key in ("softmax_expsum", "softmax_exp", "softmax_maxelem"):
        sch.compute_at(sch.get_sblock(found[key]), rows)
    for key in ("softmax_expsum", "softmax_maxelem"):
        _reduction_inside(sch, sch.get_sblock(found[key]), 1, cpu.lanes, fuse_spatial=False)
    exp_loops = sch.get_loops(sch.get_sblock(found["softmax_exp"]))[1:]
    if exp_loops:
        _, ev = sch.split(exp_loops[-1], [None, vector_factor(_extent(sch, exp_loops[-1]), cpu.lanes)])
        sch.vectorize(ev)
    return sch


class Softmax(Rule):
    name = "softmax"
    apply = _guarded(schedule_softmax)


# ------------------------------------------------------------------ fc and local: dot products
def _divisor_at_most(extent: int, limit: int) -> int:
    return max(d for d in range(1, min(extent, limit) + 1) if extent % d == 0)


def dot_tile(batch: int, outputs: int, cpu: ISA) -> tuple[int, int]:
    """Register tile (batch rows x outputs) of the dot-product kernel: bt*ot vector accumulators
    plus bt + ot loaded vectors fit the register file. Batch 1 is a GEMV: ot rows of the weight
    matrix stream at once against one input vector."""
    wide = cpu.registers >= 32
    bt_max, ot_max = (1, 8 if wide else 4) if batch == 1 else ((4, 4) if wide else (3, 3))
    return _divisor_at_most(batch, bt_max), _divisor_at_most(outputs, ot_max)


def schedule_dot(func, kernel, cpu: ISA):
    """fc (y[b,o] = sum_k x[b,k] w[o,k]) and local (the same per output position, on the im2col
    patches lower.py builds): both operands are contiguous along k, so k is the vector axis.
    k is split into vectors and rfactor'd: a tile of bt batches x ot outputs keeps bt*ot vector
    accumulators in registers; each step loads bt input and ot weight vectors (every weight
    vector serves bt batch rows); the lanes are summed once per output at the end. Parallel over
    output tiles (and positions); the batch tiles run inside, so a weight tile stays in cache."""
    if kernel.kind not in ("fc", "local"):
        return None
    sch = s_tir.Schedule(func)
    out = _inline_epilogue(sch, kernel.main)
    red = sch.get_sblock(kernel.main)
    batch = _extent(sch, sch.get_loops(out)[0])
    copies = [b for b in kernel.blocks if b.endswith("_patch") or (batch_innermost(batch) and b.endswith("_flat"))]
    _inline_producers(sch, kernel.main, keep=copies)
    if batch_innermost(batch):
        return _schedule_batch_inner(sch, kernel, cpu, out, red)
    _, reduce = _loops_by_kind(sch, red, sch.get_loops(red))
    k = sch.fuse(*reduce) if len(reduce) > 1 else reduce[0]
    extent = _extent(sch, k)
    v = vector_factor(extent, cpu.lanes)
    if extent % v:
        return None
    _, kv = sch.split(k, [None, v])
    spatial_dims = len(sch.get(red).iter_vars) - len(reduce)
    rf = sch.rfactor(kv, factor_axis=spatial_dims)    # lanes innermost: accumulators are whole vectors
    # the output block's loops: (b, o, *positions)
    b, o, *positions = sch.get_loops(out)
    bt, ot = dot_tile(_extent(sch, b), _extent(sch, o), cpu)
    bo, bi = sch.split(b, [None, bt])
    oo, oi = sch.split(o, [None, ot])
    sch.reorder(*positions, oo, bo, bi, oi)
    outer = sch.fuse(*positions, oo) if positions else oo
    _parallel(sch, outer, _product(sch, sch.get_loops(out)) * extent)
    sch.compute_at(red, bo)
    sch.compute_at(rf, bo)
    sch.set_scope(rf, 0, "local")
    lanes, ko = _loops_by_kind(sch, rf, sch.get_loops(rf)[2:])   # (kv, bi, oi), (ko); unit loops dropped
    kv_loop, tile = lanes[0], lanes[1:]
    sch.reorder(*ko, *tile, kv_loop)
    for lp in tile:
        sch.unroll(lp)
    sch.vectorize(kv_loop)
    if ko:                                    # k of one vector leaves no loop to split the init off
        sch.decompose_reduction(rf, ko[0])
    for block in _root_blocks(sch):           # the im2col patches of a local layer
        if _name(sch, block).endswith("_patch"):
            parallel_vectorize(sch, block, cpu.lanes, inner_dims=3)
    return sch


def batch_tile(batch: int, outputs: int, cpu: ISA) -> tuple[int, int, int]:
    """(images per vector, vectors per tile, outputs per tile) of the batch-innermost kernel:
    ot*nb accumulators, nb input vectors and one broadcast weight within the register file."""
    bvec = vector_factor(batch, cpu.lanes)
    groups = batch // bvec
    fits = [(ot * nb, ot, nb) for ot in range(1, 17) if outputs % ot == 0
            for nb in range(1, groups + 1) if groups % nb == 0 and ot * nb + nb + 1 <= cpu.registers]
    _, ot, nb = max(fits)      # most accumulators; then most outputs (image vectors stream from L2,
    return bvec, nb, ot        # weights are broadcast from L1: fewer image loads per FMA)


def _schedule_batch_inner(sch, kernel, cpu: ISA, out, red):
    """fc/local at large batch, on lower.py's batch-innermost copy of the input (flat[k, n],
    P[g, y, z, c, i, j, n]): a tile of ot outputs x nb vectors of images; each step broadcasts
    one weight per output and loads nb image vectors, so every weight is read once per tile
    of nb*lanes images. No horizontal sums. Parallel over output tiles (and positions)."""
    b, o, *positions = sch.get_loops(out)
    bvec, nb, ot = batch_tile(_extent(sch, b), _extent(sch, o), cpu)
    if _extent(sch, b) % bvec:
        return None
    work = _product(sch, sch.get_loops(out))
    bo, bn, bl = sch.split(b, [None, nb, bvec])
    oo, oi = sch.split(o, [None, ot])
    sch.reorder(*positions, oo, bo, oi, bn, bl)
    outer = sch.fuse(*positions, oo) if positions else oo
    sch.vectorize(bl)
    _parallel(sch, outer, work * 64)
    sch.compute_at(red, bo)
    spatial, reduce = _loops_by_kind(sch, red, sch.get_loops(red)[2:])   # (images, outputs), unit loops dropped
    images = spatial[0]
    tile = spatial[1:]
    rn, rl = sch.split(images, [None, bvec])
    sch.reorder(*reduce, *tile, rn, rl)
    for lp in (*tile, rn):
        sch.unroll(lp)
    sch.vectorize(rl)
    sch.set_scope(red, 0, "local")
    # accumulators (b, o, ...) -> (o, ..., b): the image vector is contiguous, a whole register
    sch.transform_layout(red, ("write", 0), lambda b, *rest: (*rest, b))
    if reduce:                                # a reduction of extent 1 leaves no loop
        sch.decompose_reduction(red, reduce[0])
    for block in _root_blocks(sch):
        if _name(sch, block).endswith(("_patch", "_flat")):
            parallel_vectorize(sch, block, cpu.lanes, inner_dims=1)
    return sch


class Dot(Rule):
    name = "dot"
    apply = _guarded(schedule_dot)


# ------------------------------------------------------------------ deconv
def schedule_deconv(func, kernel, cpu: ISA):
    """Transposed conv in lower.py's per-phase gather form. Planes (n, f) in parallel; the
    plane's phase-split accumulator is computed row by row and phase by phase, summing the
    taps that hit input pixels (rc, ty, tx) with input columns as vector lanes (contiguous
    loads, scalar weight broadcast), then the plane is written with bias and neuron as vectors.
    The zero-padded input is one parallel pass of its own."""
    if kernel.kind != "deconv":
        return None
    sch = s_tir.Schedule(func)
    out, acc, pads = _window_blocks(sch, kernel)
    n, c, y, z = sch.get_loops(out)
    width = _extent(sch, z)
    planes = sch.fuse(n, c)          # rows stay a loop of their own: (y + pad) // s stays affine
    _, zv = sch.split(z, [None, vector_factor(width, cpu.lanes)])
    sch.vectorize(zv)
    _parallel(sch, planes, _extent(sch, planes) * _extent(sch, y) * width)
    sch.compute_at(acc, planes)      # at a row, (y + pad) // s would not be an affine binding
    spatial, reduce = _loops_by_kind(sch, acc, sch.get_loops(acc)[1:])   # (qh, rh, qw, rw), unit loops dropped
    qw, phase = spatial[-2:] if _phases(sch, acc) > 1 else (spatial[-1], None)
    qo, qv = sch.split(qw, [None, vector_factor(_extent(sch, qw), cpu.lanes)])
    sch.reorder(*spatial[:-2 if phase is not None else -1], *([phase] if phase is not None else []), qo, *reduce, qv)
    sch.vectorize(qv)
    if reduce:                                # one tap per phase and one channel: no loop left
        sch.decompose_reduction(acc, reduce[0])
    for pad in pads:
        parallel_vectorize(sch, pad, cpu.lanes)
    return sch


def _phases(sch, acc) -> int:
    """Output column phases of lower.py's deconv buffer (its last dimension)."""
    return int(sch.get(acc).iter_vars[5].dom.extent)


class Deconv(Rule):
    name = "deconv"
    apply = _guarded(schedule_deconv)


# ------------------------------------------------------------------ anything else
class Parallel(Rule):
    """The last resort: each block's spatial loops fused and run in parallel, unchanged
    otherwise (correct for any kernel; the rules above are what make kernels fast)."""
    name = "parallel"

    def apply(self, func, target, tunable=False):
        sch = s_tir.Schedule(func)
        try:
            for block in _root_blocks(sch):
                loops = sch.get_loops(block)
                _, reduce = _loops_by_kind(sch, block, loops)
                spatial = loops[:len(loops) - len(reduce)] if reduce else loops   # te puts reductions last
                if spatial:
                    sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
        except Exception:     # noqa: BLE001
            return None
        return sch


NON_CONV_RULES: list[Rule] = [Injective(), Pool(), LRN(), Softmax(), Dot(), Deconv()]
# --- end of rules: non-conv kernels

RULES: list[Rule] = [*CONV_RULES, *NON_CONV_RULES, Parallel()]
