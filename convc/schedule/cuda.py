"""Default schedule rules for CUDA (sm_80, sm_90a): convc's rules first, then DLight's."""
from __future__ import annotations

from tvm.s_tir import dlight as dl

from . import Rule


class DLight(Rule):
    """One of DLight's GPU rules, under a name `convc build` can report."""

    def __init__(self, rule, name: str):
        self.rule, self.name = rule, name

    def apply(self, func, target, tunable=False):
        return self.rule.apply(func, target, tunable)


# GeneralReduction before Reduction: Reduction takes grouped convs and emits a schedule that
# LowerCrossThreadReduction rejects (TVM 0.27).
RULES = [
    DLight(dl.gpu.Matmul(), "dlight.Matmul"),
    DLight(dl.gpu.GEMV(), "dlight.GEMV"),
    DLight(dl.gpu.GeneralReduction(), "dlight.GeneralReduction"),
    DLight(dl.gpu.Reduction(), "dlight.Reduction"),
    DLight(dl.gpu.Fallback(), "dlight.Fallback"),
]
