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
        return ISA(16, 32, cores)
    if "avx2" in features or "+avx2" in features or "avx" in features:
        return ISA(8, 16, cores)
    return ISA(4, 16, cores)


RULES: list[Rule] = []
