"""Shared helpers for the front-end tests: parse errors, expected diagnostics, float64 torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import convc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.conv"))


def parse_error(text, filename: str = "net.conv") -> convc.ConvcError:
    """The ConvcError that parsing `text` raises (fails the test if it parses)."""
    with pytest.raises(convc.ConvcError) as info:
        convc.parse(text, filename=filename)
    return info.value


def expected_render(text: str, line: int, col: int, length: int, message: str,
                    help: str | None = None, filename: str = "net.conv") -> str:
    """A diagnostic as spec section 6 lays it out, built here by hand from the source text."""
    out = [f"{filename}:{line}:{col}: error: {message}", text.splitlines()[line - 1],
           " " * (col - 1) + "^" + "~" * (length - 1)]
    if help is not None:
        out.append(f"help: {help}")
    return "\n".join(out)


def net(text: str, filename: str = "net.conv") -> convc.Network:
    return convc.parse(text, filename=filename)


def layer_net(layer_line: str, shape=(3, 8, 8), convention: str = "caffe") -> convc.Network:
    """A network of one input and the given layer statement(s)."""
    return net(f"convention {convention}\ninput x {'x'.join(map(str, shape))}\n{layer_line}\n")


def rand(*shape, seed: int = 0, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape)


def t64(a):
    """A numpy array as a float64 torch tensor."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def close(actual, expected, rtol: float = 1e-9, atol: float = 1e-9):
    """assert_allclose with shapes checked first (a clear message when they differ)."""
    actual, expected = np.asarray(actual), np.asarray(getattr(expected, "numpy", lambda: expected)())
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
