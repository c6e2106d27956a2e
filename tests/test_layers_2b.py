"""Spec §2b layers (prelu, scale, max, mul, add coeff, slice, crop, power): the oracle against
PyTorch (float64) or direct loops, the compiled kernels against the oracle, NaN propagation,
shapes, errors and `convc info`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convc
from conftest import close, layer_net, net, parse_error, rand, t64

BRANCHES = "conv a filters=4 size=1\nconv b from x filters=4 size=1\nconv c from x filters=4 size=1\n"


def random_params(n, seed=1):
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(-1, 1, shape) for name, shape in n.param_shapes().items()}


def run(text, shape=(4, 6, 7), batch=2, seed=0):
    n = net(f"input x {'x'.join(map(str, shape))}\n{text}\n")
    x = rand(batch, *shape, seed=seed)
    params = random_params(n, seed + 1)
    return n, x, params, convc.oracle.run(n, x, params, all_layers=True)


# ----------------------------------------------------------------------------- oracle vs torch / loops
@pytest.mark.parametrize("shared", [False, True])
def test_prelu_vs_torch(shared):
    n, x, params, ys = run(f"prelu p shared={'true' if shared else 'false'}")
    assert n.param_shapes() == {"p.slope": (1,) if shared else (4,)}
    close(ys["p"], F.prelu(t64(x), t64(params["p.slope"])))


def test_prelu_after_fc_is_per_output():
    n, x, params, ys = run("fc f outputs=5\nprelu p")
    close(ys["p"], F.prelu(t64(ys["f"]), t64(params["p.slope"])))


@pytest.mark.parametrize("bias", [True, False])
def test_scale_vs_loops(bias):
    n, x, params, ys = run(f"scale s bias={'true' if bias else 'false'}")
    assert set(n.param_shapes()) == ({"s.scale", "s.shift"} if bias else {"s.scale"})
    expected = np.empty_like(x)
    for c in range(4):
        expected[:, c] = x[:, c] * params["s.scale"][c] + (params["s.shift"][c] if bias else 0)
    close(ys["s"], expected)


def test_max_mul_add_coeff_vs_torch():
    n, x, params, ys = run(BRANCHES + "max m from a, b, c\nmul p from a, b, c\nadd s from a, b, c coeff=[0.5,-2,3]\n"
                           "add s1 from a, b")
    a, b, c = (t64(ys[k]) for k in "abc")
    close(ys["m"], torch.maximum(torch.maximum(a, b), c))
    close(ys["p"], a * b * c)
    close(ys["s"], 0.5 * a - 2 * b + 3 * c)
    close(ys["s1"], a + b)


def test_slice_vs_torch():
    n, x, params, ys = run("slice s begin=1 end=3\nfc f from x outputs=6\nslice t begin=2 end=6")
    assert n.layer("s").out_shape == (2, 6, 7) and n.layer("t").out_shape == (4,)
    close(ys["s"], t64(x)[:, 1:3])
    close(ys["t"], t64(ys["f"])[:, 2:6])


def test_crop_vs_loops():
    n, x, params, ys = run("pool r max size=3 stride=2\ncrop c from x, r offset=1x2\ncrop d from x size=3x4 offset=2")
    assert n.layer("c").out_shape == (4, 3, 3) and n.layer("d").out_shape == (4, 3, 4)
    expected = np.empty((2, 4, 3, 3))
    for i in range(3):
        for j in range(3):
            expected[:, :, i, j] = x[:, :, i + 1, j + 2]
    close(ys["c"], expected)
    close(ys["d"], x[:, :, 2:5, 2:6])


@pytest.mark.parametrize("power, scale, shift", [(1, 1, 0), (2, 0.5, 1), (3, -1, 0.25), (0.5, 2, 3), (0, 2, 1),
                                                 (-1, 1, 2.5)])
def test_power_vs_torch(power, scale, shift):
    n, x, params, ys = run(f"power p power={power} scale={scale} shift={shift}")
    close(ys["p"], torch.pow(shift + scale * t64(x), power))


def test_power_of_negative_base_to_fractional_power_is_nan():
    n, x, params, ys = run("power p power=0.5 scale=-1 shift=-1.5")
    assert np.isnan(ys["p"]).all()


# ----------------------------------------------------------------------------- NaN
@pytest.mark.parametrize("kind", ["max", "prelu"])
def test_nan_propagates_like_torch(kind):
    """NaN in gives NaN out, in the oracle and in the compiled kernels, whichever input holds the
    NaN (a plain max(a, b) returns b when a is NaN)."""
    text = {"max": "slice a begin=0 end=2\nslice b from x begin=2 end=4\nmax m from a, b",
            "prelu": "prelu m"}[kind]
    n = net(f"input x 4x3x3\n{text}\n")
    x = rand(1, 4, 3, 3).astype(np.float32)
    x[0, 1, 1, 1] = np.nan           # in a (max's first input)
    x[0, 2, 0, 0] = np.nan           # in b (its second)
    params = {k: v.astype(np.float32) for k, v in random_params(n).items()}
    xt = torch.from_numpy(x)
    expected = (torch.maximum(xt[:, :2], xt[:, 2:]) if kind == "max"
                else F.prelu(xt, torch.from_numpy(params["m.slope"]))).numpy()
    nan = np.isnan(expected)
    assert nan.sum() == 2
    y = np.asarray(convc.oracle.run(n, x, params))
    z = convc.compile(n, target="llvm", batch=1, records=None)(x, params)
    for out in (y, z):
        assert (np.isnan(out) == nan).all()
        np.testing.assert_allclose(out[~nan], expected[~nan], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- compiled vs oracle
def test_compiled_matches_oracle():
    text = (BRANCHES + "max m from a, b, c\nmul p from a, b\nadd s from m, p, c coeff=[0.5,-2,1.5]\n"
            "prelu r from s\nprelu r2 from p shared=true\nscale sc from r\nscale sc2 from r2 bias=false\n"
            "slice sl from sc begin=1 end=3\nslice sl2 from sc2 begin=0 end=2\nadd u from sl, sl2\n"
            "pool q from u max size=2 stride=2\ncrop cr from u, q offset=1\ncrop cr2 from u size=2x3\n"
            "power pw from cr power=2 scale=0.5 shift=1\npower pw2 from pw power=0.5 scale=-0.25 shift=3\n"
            "power pw3 from cr2 power=3 scale=2\nfc f from pw2 outputs=6\nprelu fp\nslice fs begin=1 end=4")
    n, x, params, ys = run(text, batch=2)
    x32 = x.astype(np.float32)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    ys = convc.oracle.run(n, x32, p32, all_layers=True)
    m = convc.compile(n, target="llvm", batch=2, records=None, all_outputs=True)
    outs = m(x32, p32)
    outs = dict(zip([layer.name for layer in n.layers], outs)) if not isinstance(outs, dict) else outs
    for name, expected in ys.items():
        np.testing.assert_allclose(outs[name], expected, rtol=1e-4, atol=1e-5, err_msg=name)


# ----------------------------------------------------------------------------- shapes and errors
def test_coeff_list_parses_and_shows_in_info():
    n = net("input x 2x3x3\nconv a filters=2 size=1\nadd s from x, a coeff=[1, -0.5e-1]\n")
    assert n.layer("s").attrs["coeff"] == (1.0, -0.05)
    assert "coeff [1,-0.05]" in n.summary()


@pytest.mark.parametrize("text, message", [
    ("add s from x, x coeff=[1,2,3]", "coeff has 3 number(s) but add has 2 inputs"),
    ("add s from x, x coeff=relu", "coeff: expected a list of numbers"),
    ("slice s begin=2 end=9", "end=9 is past the 4 channels of x"),
    ("slice s begin=3 end=3", "begin=3 must be below end=3"),
    ("slice s end=3", "slice s needs begin="),
    ("crop c from x size=5 offset=3", "the crop does not fit along H: offset 3 + 5 (size) > 6 (from x)"),
    ("crop c", "crop needs a reference layer"),
    ("pool p max size=2 stride=2\ncrop c from x, p size=2", "not both"),
    ("fc f outputs=3\nmax m from x, f", "max needs inputs of the same shape"),
    ("mul m from x", "mul takes at least 2 input(s), got 1"),
    ("prelu p shared=maybe", "shared: expected one of true, false"),
])
def test_errors(text, message):
    err = parse_error(f"input x 4x6x7\n{text}\n")
    assert message in str(err), str(err)


def test_info_rows():
    n = net("input x 4x6x7\nslice s begin=1 end=3\ncrop c from x, s offset=0\npower p power=2 shift=1\nprelu r shared=true\n")
    text = n.summary()
    assert "channels [1,3)" in text and "offset 0" in text and "(1 + 1x)^2" in text and "shared" in text
    assert n.param_shapes() == {"r.slope": (1,)}
    assert n.init_params()["r.slope"][0] == pytest.approx(0.25)


def test_bench_baseline_knows_the_new_layers():
    """`convc bench`'s PyTorch baseline computes the same as the oracle (coeff included)."""
    from convc.baselines import TorchNet
    text = (BRANCHES + "max m from a, b, c\nmul p from a, b\nadd s from m, p, c coeff=[0.5,-2,1.5]\nprelu r\n"
            "scale sc\nslice sl begin=1 end=3\ncrop cr size=3 offset=1x2\npower pw power=2 shift=1")
    n, x, params, ys = run(text)
    got = TorchNet(n, params)(torch.from_numpy(x), all_layers=True)
    for name, expected in ys.items():
        np.testing.assert_allclose(got[name].numpy(), expected, rtol=1e-9, atol=1e-9, err_msg=name)
