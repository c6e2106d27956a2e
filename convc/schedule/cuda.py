"""Default schedule rules for CUDA (sm_80, sm_90a): convc's rules first, then DLight's.

convc's rules recognise a kernel by its main block (lower.py's block names, see `inspect_kernel`)
and schedule it without search:

- `convc.ImplicitGemm` (conv, deconv, local; fc at batch > 1): the reduction is a GEMM, output
  positions x filters-per-group x (input channels per group . KH . KW), the group a batch axis.
  Each thread block computes a tile of output positions (a rectangle of rows x columns of one
  image, or a range of images for fc/local) x filters of one group; each thread a register tile
  of up to 4 filters x 4 positions. Per step of the reduction the block stages the input window
  (the padding block computed into shared memory: padding never reaches the hot loop) and the
  weight tile in shared memory; the bias, neuron and fused elementwise layers run on the
  registers before the one write to global memory.
- `convc.Gemv` (fc at batch 1): a warp per output row, lanes over the row (coalesced), the input
  vector staged in shared memory in chunks, a warp-shuffle reduction.
- `convc.Window` (pool, LRN): one thread per output element, consecutive threads on consecutive
  columns (coalesced), the window (9 or 25 values) reduced in registers; padding inlined.

Tile sizes come from `plan_gemm`, a small cost model of the shape (no search, no GPU needed):
see docs/gpu.md.
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.sym.pattern import detect_linear_equation
from tvm.s_tir import dlight as dl

from . import Rule, inspect_kernel

SMS = 132                     # streaming multiprocessors of an H100/H200 (an A100 has 108)
BLOCKS_PER_SM = 2             # resident blocks assumed when counting waves
SHARED_BUDGET = 48 * 1024     # bytes of shared memory per block (the static limit)
THREADS = range(32, 129, 32)  # threads per block: at 256 and 512, ptxas aimed at 40-64 registers and spilled
REG_TILES = (1, 2, 4)         # register tile per thread along one GEMM axis (4 x 4 at most)
UNROLL = 64                   # pragma_auto_unroll_max_step on the reduce steps (512 spilled more)


class ConvcRule(Rule):
    """A convc rule: `schedule` recognises and tiles; a schedule primitive that fails leaves
    the kernel to the next rule (DLight's) with a warning, never fails the build. The test
    suite checks that no conv/local/fc/deconv kernel of any example or test net falls through."""

    def apply(self, func, target, tunable=False):
        try:
            return self.schedule(func, target)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:   # ScheduleError, TVM InternalError
            warnings.warn(f"{self.name} could not schedule a kernel ({str(err).splitlines()[0][:200]}); "
                          "it falls back to DLight", stacklevel=2)
            return None

    def schedule(self, func, target):
        raise NotImplementedError


# ----------------------------------------------------------------------------- shared helpers
def _block(sch, name):
    return sch.get_sblock(name)


def _blocks(sch):
    return sch.get_child_blocks(sch.get_sblock("root"))


def _name(sch, block) -> str:
    return sch.get(block).name_hint


def _fuse_epilogue(sch, main_name: str):
    """Reverse-inline the elementwise chain after the main block into its first consumer.
    Returns that consumer (the epilogue: bias, neuron and fused layers), or None when the main
    block writes the kernel's output itself."""
    names = [_name(sch, b) for b in _blocks(sch)]
    after = names[names.index(main_name) + 1:]
    for name in reversed(after[1:]):
        sch.reverse_compute_inline(_block(sch, name))
    return _block(sch, after[0]) if after else None


def _producers(sch, main_name: str) -> list[str]:
    names = [_name(sch, b) for b in _blocks(sch)]
    return names[:names.index(main_name)]


def _loads(stmt, buffer) -> list:
    found = []

    def visit(node):
        if node.source.same_as(buffer):
            found.append(node)

    tvm_ffi.structural_walk(stmt, [(tvm.ir.TensorLoad, visit)], order="post")
    return found


def _coefficients(index, loop_vars) -> list[int]:
    """Integer coefficients of an index expression linear in loop_vars (last: the constant)."""
    coeffs = detect_linear_equation(index, loop_vars) if loop_vars else []
    return [int(c) if isinstance(c, tirx.IntImm) else 0 for c in coeffs]


def _cooperative_fetch(sch, block, threads: int, ndim: int, vector: int = 1):
    """All threads of the block copy a shared-memory tile: fused loops, threadIdx.x innermost
    (consecutive threads read consecutive addresses), `vector` floats per load (float4)."""
    loops = sch.get_loops(block)[-ndim:]
    fused = sch.fuse(*loops)
    if vector > 1:
        _, tx, vec = sch.split(fused, [None, threads, vector])
        sch.vectorize(vec)
    else:
        _, tx = sch.split(fused, [None, threads])
    sch.bind(tx, "threadIdx.x")


def _weight_vector(shape: "Shape", tile: "Tile") -> int:
    """4 when every row of the staged weight tile starts on a 16-byte boundary and is a
    multiple of 4 floats long (so float4 loads are aligned), else 1."""
    if shape.kind == "fc":
        (bk,) = tile.red
        (k,) = shape.reduce
        return 4 if bk % 4 == 0 and k % 4 == 0 else 1
    if shape.kind != "conv" or shape.depthwise:
        return 1
    (bc, kh_i, kw_i), (cg, kh, kw) = tile.red, shape.reduce
    row, pitch = bc * kh * kw, cg * kh * kw
    return 4 if (kh_i, kw_i) == (kh, kw) and row % 4 == 0 and pitch % 4 == 0 else 1


# ----------------------------------------------------------------------------- GEMM view
@dataclass(frozen=True)
class Axis:
    """A spatial loop of the main block and how it may be tiled."""
    name: str                 # b, g, f, y, z, o
    extent: int
    role: str                 # "m" (output positions), "n" (filters), "batch" (grid only)
    divide: bool = False      # the tile must divide the extent (filters of one group)


@dataclass(frozen=True)
class Shape:
    """The GEMM view of a conv/local/deconv/fc kernel, read off its main block."""
    kind: str                 # conv, deconv, local, fc
    axes: tuple               # spatial Axis list, in loop order after the group split
    reduce: tuple             # reduce extents: (cg, kh, kw) or (k,)
    stride: tuple = (1, 1)    # input rows/columns per output row/column
    dilation: tuple = (1, 1)
    depthwise: bool = False


@dataclass(frozen=True)
class Tile:
    thr: tuple                # threads per spatial axis (same order as Shape.axes)
    reg: tuple                # register tile per spatial axis
    red: tuple                # inner (staged) extent per reduce axis
    threads: int = 0
    shared_bytes: int = 0
    blocks: int = 0
    score: float = field(default=0.0, compare=False)


def _shared_floats(shape: Shape, sizes: dict, red: tuple) -> int:
    """Floats of the two shared-memory tiles for a block tile `sizes` (axis -> extent)."""
    if shape.kind == "fc":
        (bk,) = red
        return sizes["b"] * bk + sizes["o"] * bk
    bc, kh, kw = red
    (sh, sw), (dh, dw) = shape.stride, shape.dilation
    rows = (sizes["y"] - 1) * sh + (kh - 1) * dh + 1
    cols = (sizes["z"] - 1) * sw + (kw - 1) * dw + 1
    channels = sizes.get("g", 1) * bc
    data = sizes["b"] * channels * rows * cols
    weights = sizes.get("g", 1) * sizes["f"] * bc * kh * kw
    if shape.kind == "local":
        weights *= sizes["y"] * sizes["z"]
    return data + weights


def _axis_options(axis: Axis, shape: Shape):
    """(threads, register tile) choices along one axis."""
    if axis.role == "batch":
        return [(1, 1)]
    threads = {1, 2, 4, 8, 16, 32}
    if axis.name in ("y", "z") and axis.extent <= 32:
        threads |= {axis.extent, -(-axis.extent // 2), -(-axis.extent // 4)}
    out = []
    regs = (1,) if axis.name == "z" and shape.kind != "fc" else REG_TILES   # threads along columns
    for t, r in itertools.product(sorted(threads), regs):
        if t * r > max(2 * axis.extent, 8) and (t, r) != (1, 1):
            continue                                  # far more than the axis: wasted threads
        if axis.divide and axis.extent % (t * r):
            continue
        out.append((t, r))
    return out or [(1, 1)]


def _reduce_options(shape: Shape):
    if shape.kind == "fc":
        (k,) = shape.reduce
        return [(bk,) for bk in (32, 16, 8) if bk <= k] or [(k,)]
    cg, kh, kw = shape.reduce
    chans = [c for c in (32, 16, 8, 4, 2, 1) if cg % c == 0 and c <= cg]
    rows = [kh] + [r for r in (1,) if r < kh]
    return [(c, r, kw) for r in rows for c in chans]


def _score(shape: Shape, tile_sizes: dict, reg_m: int, reg_n: int, blocks: int, threads: int) -> float:
    """Estimated time, up to a constant: waves of blocks x work per thread, with penalties for
    small register tiles (shared-memory loads per FMA) and small block tiles (global loads)."""
    waves = math.ceil(blocks / (SMS * BLOCKS_PER_SM))
    per_thread = reg_m * reg_n
    block_m = math.prod(tile_sizes[a] for a in tile_sizes if a in ("b", "y", "z"))
    block_n = math.prod(tile_sizes[a] for a in tile_sizes if a in ("f", "o", "g"))
    loads = 1 + 1 / reg_m + 1 / reg_n + 4 * (1 / block_m + 1 / block_n)
    # consecutive threads on consecutive output columns: coalesced writes, conflict-free reads
    row = min(shape.axes[-1].extent, 8)
    coalesced = min(tile_sizes.get("z", row), row) / row if shape.kind != "fc" else 1
    idle = max(THREADS) / threads if blocks < SMS else 1   # fewer blocks than SMs: want full blocks
    return waves * per_thread * loads * idle / (0.75 + 0.25 * coalesced)


@lru_cache(maxsize=None)
def plan_gemm(shape: Shape) -> Tile | None:
    """The cheapest tile under the limits (threads, shared memory) by `_score`."""
    best = None
    options = [_axis_options(a, shape) for a in shape.axes]
    for choice in itertools.product(*options):
        thr = tuple(t for t, _ in choice)
        threads = math.prod(thr)
        if threads not in THREADS:
            continue
        reg = tuple(r for _, r in choice)
        roles = {a.role for a in shape.axes}
        reg_m = math.prod(r for r, a in zip(reg, shape.axes) if a.role == "m")
        reg_n = math.prod(r for r, a in zip(reg, shape.axes) if a.role == "n")
        if reg_m > 4 or reg_n > 4 or "m" not in roles:
            continue
        sizes = {a.name: t * r for a, (t, r) in zip(shape.axes, choice)}
        blocks = math.prod(-(-a.extent // sizes[a.name]) for a in shape.axes)
        padded = math.prod(-(-a.extent // sizes[a.name]) * sizes[a.name] for a in shape.axes)
        score = _score(shape, sizes, reg_m, reg_n, blocks, threads) * padded / math.prod(a.extent for a in shape.axes)
        for red in _reduce_options(shape):
            smem = 4 * _shared_floats(shape, sizes, red)
            if smem > SHARED_BUDGET:
                continue
            tile = Tile(thr, reg, red, threads, smem, blocks, score - 1e-6 * math.prod(red))
            if best is None or tile.score < best.score:
                best = tile
            break                                      # the largest reduce tile that fits
    return best


def gemm_shape(sch, kernel) -> Shape | None:
    """Read the GEMM view of a conv/deconv/local/fc main block."""
    block = sch.get(_block(sch, kernel.main))
    spatial = [iv for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    reduce = [iv for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    ext = [int(iv.dom.extent) for iv in spatial]
    rext = tuple(int(iv.dom.extent) for iv in reduce)
    data = block.reads[0].source
    if kernel.kind == "fc":
        if len(ext) != 2 or len(rext) != 1:
            return None
        return Shape("fc", (Axis("b", ext[0], "m"), Axis("o", ext[1], "n")), rext)
    if len(ext) != 4 or len(rext) != 3:
        return None
    n, f, oh, ow = ext
    cg = rext[0]
    channels = int(data.shape[1])
    groups = channels // cg
    fg = f // groups
    load = _loads(block.body, data)[0]
    y, z, ry, rx = spatial[2].var, spatial[3].var, reduce[1].var, reduce[2].var
    sh, dh, _ = _coefficients(load.indices[2], [y, ry])
    sw, dw, _ = _coefficients(load.indices[3], [z, rx])
    if min(sh, sw, dh, dw) < 1:
        return None
    depthwise = fg == 1 and groups > 1
    if kernel.kind == "local":
        axes = (Axis("b", n, "m"), Axis("g", groups, "batch"), Axis("f", fg, "n", groups > 1),
                Axis("y", oh, "m"), Axis("z", ow, "m"))
    elif depthwise:
        axes = (Axis("b", n, "batch"), Axis("g", groups, "n"), Axis("f", 1, "batch"),
                Axis("y", oh, "m"), Axis("z", ow, "m"))
    else:
        axes = (Axis("b", n, "batch"), Axis("g", groups, "batch"), Axis("f", fg, "n", groups > 1),
                Axis("y", oh, "m"), Axis("z", ow, "m"))
    return Shape(kernel.kind, axes, rext, (sh, sw), (dh, dw), depthwise)


def schedule_gemm(func, kernel, shape: Shape, tile: Tile):
    """The tiled loop nest: blocks x threads x reduce-outer x reduce-inner x register tile."""
    sch = s_tir.Schedule(func)
    main = _block(sch, kernel.main)
    epilogue = _fuse_epilogue(sch, kernel.main)
    staged = _producers(sch, kernel.main)
    reads = [r.source for r in sch.get(main).reads]
    producer_of = {sch.get(_block(sch, p)).writes[0].source: p for p in staged}
    # producers the main block does not read directly (none today) are inlined
    for p in staged:
        if not any(sch.get(_block(sch, p)).writes[0].source.same_as(b) for b in reads):
            sch.compute_inline(_block(sch, p))

    loops = sch.get_loops(main)
    nsp = 2 if shape.kind == "fc" else 4
    spatial, red = loops[:nsp], loops[nsp:]
    if shape.kind != "fc":          # o -> (group, filter in group): the group is a loop
        g, f = sch.split(spatial[1], [shape.axes[1].extent, shape.axes[2].extent])
        spatial = [spatial[0], g, f, spatial[2], spatial[3]]
    grid, thread, regs = [], [], []
    for loop, t, r in zip(spatial, tile.thr, tile.reg):
        o, ti, ri = sch.split(loop, [None, t, r])     # a thread's register tile is contiguous
        grid.append(o)
        thread.append(ti)
        regs.append(ri)
    r_outer, r_inner = [], []
    for loop, inner in zip(red, tile.red):
        o, i = sch.split(loop, [None, inner])
        r_outer.append(o)
        r_inner.append(i)
    sch.reorder(*grid, *thread, *r_outer, *r_inner, *regs)
    bx = sch.fuse(*grid)
    tx = sch.fuse(*thread)
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")

    if epilogue is not None:        # accumulators in registers, the epilogue on them
        sch.set_scope(main, 0, "local")
        sch.reverse_compute_at(epilogue, tx, preserve_unit_loops=True)
    else:
        local = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(local, tx, preserve_unit_loops=True)
        epilogue = local

    for i, buf in enumerate(reads):  # operands staged in shared memory per reduce-outer step
        producer = next((p for b, p in producer_of.items() if b.same_as(buf)), None)
        if producer is not None:
            stage = _block(sch, producer)
            sch.set_scope(stage, 0, "shared")
        else:
            stage = sch.cache_read(main, i, "shared")
        sch.compute_at(stage, r_outer[-1], preserve_unit_loops=True)
        vector = _weight_vector(shape, tile) if i == 1 else 1
        _cooperative_fetch(sch, stage, tile.threads, len(buf.shape), vector)

    for loop in regs:
        sch.unroll(loop)
    sch.annotate(r_outer[-1], "pragma_auto_unroll_max_step", UNROLL)
    sch.annotate(r_outer[-1], "pragma_unroll_explicit", 1)
    for loop in sch.get_loops(epilogue)[2:]:
        sch.unroll(loop)
    sch.decompose_reduction(main, r_outer[0])
    return sch


class ImplicitGemm(ConvcRule):
    """conv, grouped/depthwise conv, deconv, local; fc at batch > 1: see the module docstring."""
    name = "convc.ImplicitGemm"
    kinds = ("conv", "deconv", "local", "fc")

    def schedule(self, func, target):
        kernel = inspect_kernel(func)
        if kernel.kind not in self.kinds:
            return None
        sch = s_tir.Schedule(func)
        shape = gemm_shape(sch, kernel)
        if shape is None or (shape.kind == "fc" and shape.axes[0].extent == 1):
            return None
        tile = plan_gemm(shape)
        if tile is None:
            return None
        return schedule_gemm(func, kernel, shape, tile)


# ----------------------------------------------------------------------------- fc at batch 1
WARPS_PER_BLOCK = 8           # output rows per block (one warp each)
GEMV_CHUNK = 2048             # floats of the input vector staged per step (8 KiB)


class Gemv(ConvcRule):
    """fc at batch 1: warp per output row, 32 lanes stride the row, warp-shuffle reduction."""
    name = "convc.Gemv"

    def schedule(self, func, target):
        kernel = inspect_kernel(func)
        if kernel.kind != "fc":
            return None
        sch = s_tir.Schedule(func)
        main = _block(sch, kernel.main)
        b_ext, o_ext, k_ext = (int(iv.dom.extent) for iv in sch.get(main).iter_vars)
        if b_ext != 1:
            return None
        epilogue = _fuse_epilogue(sch, kernel.main)
        producers = _producers(sch, kernel.main)
        b, o, k = sch.get_loops(main)
        warp = 32
        chunk = min(GEMV_CHUNK, -(-k_ext // warp) * warp)
        ko, ki, kt = sch.split(k, [None, chunk // warp, warp])
        bx, ty = sch.split(o, [None, WARPS_PER_BLOCK])
        sch.reorder(b, bx, ty, ko, ki, kt)
        # no rfactor: in TVM 0.27 it drops the `k < K` predicate of a partial last chunk.
        # The lane loop is a reduction bound to threadIdx.x: each lane sums its strided part of
        # the row, then LowerCrossThreadReduction adds the 32 lanes with warp shuffles.
        sch.bind(sch.fuse(b, bx), "blockIdx.x")
        sch.bind(ty, "threadIdx.y")
        sch.bind(kt, "threadIdx.x")
        if epilogue is not None:
            sch.set_scope(main, 0, "local")
            sch.reverse_compute_at(epilogue, ty, preserve_unit_loops=True)
        # the input vector in shared memory, chunk by chunk
        data = sch.get(main).reads[0].source
        stage = None
        for p in producers:
            if sch.get(_block(sch, p)).writes[0].source.same_as(data):
                stage = _block(sch, p)
                sch.set_scope(stage, 0, "shared")
        if stage is None:
            stage = sch.cache_read(main, 0, "shared")
        sch.compute_at(stage, ko, preserve_unit_loops=True)
        fused = sch.fuse(*sch.get_loops(stage)[-2:])
        _, yy, xx = sch.split(fused, [None, WARPS_PER_BLOCK, warp])
        sch.bind(yy, "threadIdx.y")
        sch.bind(xx, "threadIdx.x")
        sch.annotate(ki, "pragma_auto_unroll_max_step", 64)
        return sch


# ----------------------------------------------------------------------------- pool, LRN
THREADS_PER_WINDOW_BLOCK = 256
MAX_WINDOW = 64               # windows up to this many values are reduced by one thread


class Window(ConvcRule):
    """pool, LRN: one thread per output element, the window reduced in registers."""
    name = "convc.Window"

    def schedule(self, func, target):
        kernel = inspect_kernel(func)
        if kernel.kind not in ("pool", "lrn"):
            return None
        sch = s_tir.Schedule(func)
        main = _block(sch, kernel.main)
        window = math.prod(int(iv.dom.extent) for iv in sch.get(main).iter_vars
                           if iv.iter_type == tirx.IterVar.CommReduce)
        if window > MAX_WINDOW:
            return None
        epilogue = _fuse_epilogue(sch, kernel.main)
        for p in _producers(sch, kernel.main):
            sch.compute_inline(_block(sch, p))
        spatial = [lp for lp, iv in zip(sch.get_loops(main), sch.get(main).iter_vars)
                   if iv.iter_type == tirx.IterVar.DataPar]
        bx, tx = sch.split(sch.fuse(*spatial), [None, THREADS_PER_WINDOW_BLOCK])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        for loop in sch.get_loops(main)[2:]:
            sch.unroll(loop)
        if epilogue is not None:
            sch.set_scope(main, 0, "local")
            sch.reverse_compute_at(epilogue, tx, preserve_unit_loops=True)
        return sch


# ----------------------------------------------------------------------------- DLight
class DLight(Rule):
    """One of DLight's GPU rules, under a name `convc build` can report."""

    def __init__(self, rule, name: str):
        self.rule, self.name = rule, name

    def apply(self, func, target, tunable=False):
        return self.rule.apply(func, target, tunable)


# GeneralReduction before Reduction: Reduction takes grouped convs and emits a schedule that
# LowerCrossThreadReduction rejects (TVM 0.27). Softmax stays with GeneralReduction (a block per
# row of 10-1000 classes); concat and other elementwise kernels with Fallback (one thread per
# element, fused loops, coalesced).
RULES = [
    ImplicitGemm(),
    Gemv(),
    Window(),
    DLight(dl.gpu.Matmul(), "dlight.Matmul"),
    DLight(dl.gpu.GEMV(), "dlight.GEMV"),
    DLight(dl.gpu.GeneralReduction(), "dlight.GeneralReduction"),
    DLight(dl.gpu.Reduction(), "dlight.Reduction"),
    DLight(dl.gpu.Fallback(), "dlight.Fallback"),
]
