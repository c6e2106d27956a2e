"""Stage 4b: default schedules, the code every kernel gets before (or without) any search.

One rule list per target family (`cpu.py` for llvm, `cuda.py` for cuda), walked per kernel the
way DLight's `ApplyDefaultSchedule` walks its rules: the first rule that recognises a kernel
schedules it. A rule is a `dlight.ScheduleRule` with a `name`; its `apply(func, target, tunable)`
returns a Schedule, or None when the kernel is not its pattern. Recognising a kernel reads the
block names that lower.py gives (`conv1_conv`, `pool1_pool`, `norm1_sum`, `fc6_dense`, ...)
and the blocks' iteration kinds, never the layer names a user chose.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl

# lower.py's block-name suffix of each layer kind's main (reduction) block
KIND_OF_SUFFIX = {"_conv": "conv", "_local": "local", "_deconv": "deconv", "_dense": "fc",
                  "_pool": "pool", "_sum": "lrn"}


class Rule(dl.ScheduleRule):
    """A default-schedule rule: `name` is what `convc build` reports for the kernels it takes."""
    name = "rule"

    def apply(self, func: tirx.PrimFunc, target, tunable: bool = False):
        raise NotImplementedError


@dataclass
class Kernel:
    """What a rule needs to know about a fused PrimFunc before it schedules it."""
    func: tirx.PrimFunc
    kind: str | None           # "conv", "local", "deconv", "fc", "pool", "lrn", or None
    main: str | None           # name of the main reduction block, if any
    blocks: list[str]          # every block, in program order


def inspect_kernel(func: tirx.PrimFunc) -> Kernel:
    sch = s_tir.Schedule(func)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))] \
        if _has_root(sch) else []
    main = kind = None
    for name in names:
        for suffix, k in KIND_OF_SUFFIX.items():
            if name.endswith(suffix) and _is_reduction(sch, name):
                main, kind = name, k
                break
        if main:
            break
    return Kernel(func, kind, main, names)


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:     # noqa: BLE001 - a PrimFunc without a root block has nothing to schedule
        return False


def _is_reduction(sch, name: str) -> bool:
    block = sch.get(sch.get_sblock(name))
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in block.iter_vars)


def rules_for(target) -> list[Rule]:
    from . import cpu, cuda
    family = {"llvm": cpu.RULES, "cuda": cuda.RULES}
    return family[target.kind.name]


def default_schedule(func: tirx.PrimFunc, target) -> tuple[tirx.PrimFunc | None, str]:
    """The first rule's schedule of one kernel: (scheduled PrimFunc, rule name), or (None, "none")."""
    for rule in rules_for(target):
        try:
            with target:
                sch = rule.apply(func, target, False)
        except Exception as err:   # noqa: BLE001 - a rule that trips on a shape must not break the build
            warnings.warn(f"default schedule rule {rule.name} failed ({str(err).splitlines()[0][:120]}); "
                          "trying the next rule")
            continue
        if isinstance(sch, list):
            sch = sch[0] if sch else None
        if sch is not None:
            return sch.mod["main"].with_attr("tirx.is_scheduled", True), rule.name
    return None, "none"


def apply_default_schedules(mod: tvm.IRModule, target, skip=()) -> tuple[tvm.IRModule, dict[str, str]]:
    """Schedule every PrimFunc not in `skip` (the tuned ones); {kernel name: rule name}."""
    rules = {}
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tirx.PrimFunc) or gv.name_hint in skip:
            continue
        scheduled, rule = default_schedule(func, target)
        if scheduled is not None:
            mod[gv] = scheduled
        rules[gv.name_hint] = rule
    return mod, rules
