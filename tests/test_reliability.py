"""Issue 13: thread-safe modules, IEEE results, an exact oracle, module files you can trust,
bounded work on bad input, and one clear error (exit 2) for each user mistake."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import convc
from convc import build, oracle
from convc.check import compare

SMALL = """network small
input data 3x12x12
conv  c1 filters=8 size=3 pad=1 neuron=relu
lrn   n1 size=3 alpha=0.01 beta=0.75
pool  p1 max size=3 stride=2
local l2 filters=4 size=3 pad=1 neuron=tanh[1.7159,0.6667]
fc    f3 outputs=5
softmax prob
"""


@pytest.fixture(scope="module")
def small():
    net = convc.parse(SMALL, "small.conv")
    params = net.init_params(3)
    return net, params, convc.compile(net, "llvm", batch=2, params=params, records=None)


@pytest.fixture(scope="module")
def exported(small, tmp_path_factory):
    d = tmp_path_factory.mktemp("module")
    return small[2].export(d / "small.so")


def _x(net, batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, *net.input_shape)).astype(np.float32)


def convc_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "convc.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)


def assert_user_error(done, message):
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "bug in convc" not in done.stderr


# ----------------------------------------------------------------------------- 1. threads
def _hammer(module, inputs, expected, threads=8, calls=50):
    """`threads` threads call `module` `calls` times each, each on its own input; every result
    is compared with the one computed before on one thread."""
    wrong, errors = [], []

    def work(i):
        try:
            for _ in range(calls):
                if not np.array_equal(module(inputs[i]), expected[i]):
                    wrong.append(i)
        except Exception as err:       # noqa: BLE001 - reported below
            errors.append(repr(err))

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors[:3]
    assert not wrong, f"{len(wrong)} of {threads * calls} results differ"


def test_one_module_called_from_8_threads(small, exported):
    net, params, m = small
    inputs = [_x(net, 2, seed=i) for i in range(8)]
    expected = [m(x) for x in inputs]
    assert not all(np.array_equal(expected[0], e) for e in expected[1:])   # the threads' results differ
    _hammer(m, inputs, expected)
    _hammer(convc.load(exported), inputs, expected)


# ----------------------------------------------------------------------------- 2. IEEE
IEEE_NET = """network ieee
input x 4x6x6
relu a1 from x
logistic a2 from x
tanh a3 from x a=1.7 b=0.6
abs a4 from x
square a5 from x
sqrt a6 from x
softrelu a7 from x
ident a8 from x
brelu a9 from x a=1
linear a10 from x a=2 b=1
leaky a11 from x a=0.1
pool pm from x max size=3 stride=2 pad=1
pool pc from x max size=2 stride=2 round=ceil
pool pg from x max global
pool pa from x avg size=3 stride=2 pad=1
lrn na from x size=3 alpha=0.01 beta=0.75
lrn nw from x region=within size=3 alpha=0.01 beta=0.75
softmax sm from x
conv c from x size=3 filters=4 pad=1 neuron=relu
conv g from x size=3 filters=4 groups=2 neuron=brelu[2]
local l from x filters=2 size=3 pad=1 neuron=leaky[0.1]
fc f from x outputs=3 neuron=softrelu
deconv d from x filters=4 size=3 stride=2 pad=1
batchnorm b from x
add ad from x, a1
concat cc from x, a2
dropout dr from x
"""
WEIGHTED = ("c", "g", "l", "f", "b")


def assert_same_ieee(got, ref, name):
    """Position by position: NaN where the oracle has NaN, the same inf, close finite values."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, name
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"{name}: NaN positions")
    np.testing.assert_array_equal(np.where(np.isinf(ref), ref, 0), np.where(np.isinf(got), got, 0),
                                  err_msg=f"{name}: inf positions")
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def ieee():
    net = convc.parse(IEEE_NET, "ieee.conv")
    return net, convc.compile(net, "llvm", batch=1, all_outputs=True, records=None)


def _specials_input(net):
    x = _x(net, 1)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 2, 2] = np.inf
    x[0, 2, 3, 3] = -np.inf
    x[0, 3] = -np.inf               # a channel of -inf: max pooling must give -inf, not -3.4e38
    x[0, 2, 0, 0] = np.nan          # a NaN in a padded corner window
    return x


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_and_inf_in_the_input_match_the_oracle(ieee):
    net, m = ieee
    x = _specials_input(net)
    params = net.init_params(0)
    got, ref = m(x, params), oracle.run(net, x, params, all_layers=True)
    for layer in net.layers:
        assert_same_ieee(got[layer.name], ref[layer.name], layer.name)
    # the probes of the issue, by value
    np.testing.assert_array_equal(np.isnan(got["a1"][0, 0, 1, 1]), True)              # relu(NaN) = NaN
    assert np.isnan(got["pg"][0, 0, 0, 0]) and got["pg"][0, 3, 0, 0] == -np.inf       # global max
    assert got["pg"][0, 1, 0, 0] == np.inf


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_in_the_weights_match_the_oracle(ieee, special):
    net, m = ieee
    x = _x(net, 1)
    params = net.init_params(0)
    for name, value in params.items():
        if name.split(".")[0] in WEIGHTED:
            value = value.copy()
            value.flat[1] = special
            params[name] = value
    got, ref = m(x, params), oracle.run(net, x, params, all_layers=True)
    for name in WEIGHTED:
        assert_same_ieee(got[name], ref[name], name)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_in_deconv_weights_matches_the_oracle(ieee):
    net, m = ieee
    x = _x(net, 1)
    params = net.init_params(0)
    params["d.weight"] = params["d.weight"].copy()
    params["d.weight"].flat[1] = np.nan
    assert_same_ieee(m(x, params)["d"], oracle.run(net, x, params, all_layers=True)["d"], "d")


def test_relu_of_the_issue():
    net = convc.parse("input x 4x1x1\nrelu r\n")
    m = convc.compile(net, "llvm", records=None)
    y = m(np.array([np.nan, -1, 2, np.inf], np.float32).reshape(1, 4, 1, 1)).ravel()
    assert np.isnan(y[0]) and list(y[1:]) == [0, 2, np.inf]


# ----------------------------------------------------------------------------- check and NaN
def test_check_compare_agrees_on_equal_nan_and_inf_and_reports_the_others():
    ref = np.array([[np.nan, np.inf, -np.inf, 1.0]])
    assert compare("same", ref.copy(), ref, 1e-4).ok
    row = compare("differ", np.array([[0.5, np.inf, np.inf, 1.0]]), ref, 1e-4)
    assert not row.ok and row.nonfinite.startswith("2 NaN/inf positions differ, first at (0, 0)")
    row = compare("finite", np.array([[np.nan, np.inf, -np.inf, 1.1]]), ref, 1e-4)
    assert not row.ok and row.nonfinite == "" and row.scaled == pytest.approx(0.1)


@pytest.mark.parametrize("rtol", ["0", "-1", "nan", "inf", "abc"])
def test_check_rtol_must_be_a_positive_number(rtol, tmp_path):
    (tmp_path / "n.conv").write_text(SMALL)
    done = convc_cli("check", tmp_path / "n.conv", "--rtol", rtol)
    assert_user_error(done, "--rtol: must be a positive number")


# ----------------------------------------------------------------------------- 3. exact oracle
def _lrn_loops(x, size, alpha, beta, k, region):
    """LRN by direct loops over each window (float64)."""
    n, c, h, w = x.shape
    lo, hi = size // 2, (size - 1) // 2
    out = np.empty_like(x, dtype=np.float64)
    for b, o, y, z in np.ndindex(n, c, h, w):
        if region == "across":
            window = x[b, max(0, o - lo): o + hi + 1, y, z]
            scale = k + alpha / size * np.sum(np.square(window, dtype=np.float64))
        else:
            window = x[b, o, max(0, y - lo): y + hi + 1, max(0, z - lo): z + hi + 1]
            scale = k + alpha / size**2 * np.sum(np.square(window, dtype=np.float64))
        out[b, o, y, z] = x[b, o, y, z] * scale ** -beta
    return out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("region", ["across", "within"])
def test_oracle_lrn_is_exact_beside_large_and_nonfinite_values(region):
    net = convc.parse(f"input x 8x6x6\nlrn n size=5 alpha=0.0001 beta=0.75 k=1 region={region}\n")
    x = np.ones((1, 8, 6, 6))
    x[0, 0, 0, 0] = 1e8             # the issue's probe: 1e8 beside ordinary values
    x[0, 5, 4, 4] = np.nan
    x[0, 3, 1, 4] = np.inf
    got = oracle.run(net, x, {})
    want = _lrn_loops(x, 5, 0.0001, 0.75, 1.0, region)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-12)
    assert np.isfinite(got).sum() > got.size // 2     # one NaN does not spread along an axis


def test_oracle_lrn_probe_of_the_issue():
    net = convc.parse("input x 3x1x1\nlrn n size=3 alpha=1 beta=0.75 k=1\n")
    x = np.array([1e8, 1.0, 1.0]).reshape(1, 3, 1, 1)
    got = oracle.run(net, x, {})
    assert got[0, 2, 0, 0] == pytest.approx(_lrn_loops(x, 3, 1, 0.75, 1, "across")[0, 2, 0, 0], rel=1e-12)
    assert got[0, 2, 0, 0] != 1.0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_oracle_average_pool_is_exact():
    net = convc.parse("input x 2x5x5\npool p avg size=3 stride=1 pad=1\n")
    x = np.ones((1, 2, 5, 5))
    x[0, 0, 0, 0], x[0, 1, 4, 4] = 1e8, np.nan
    got = oracle.run(net, x, {})
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for c, y, z in np.ndindex(2, 5, 5):
        window = xp[0, c, y: y + 3, z: z + 3]
        count = (min(y + 2, 6) - max(y - 1, -1)) * (min(z + 2, 6) - max(z - 1, -1))   # caffe: pad counts
        want = window.sum() / count
        assert (np.isnan(want) and np.isnan(got[0, c, y, z])) or got[0, c, y, z] == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- 4. module files
def test_export_writes_size_and_sha256(exported):
    import hashlib
    side = json.loads(Path(str(exported) + ".json").read_text())
    data = exported.read_bytes()
    assert side["library"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert not [p for p in exported.parent.iterdir() if ".tmp" in p.name]     # no temporaries left


def test_a_failed_export_keeps_the_previous_pair(small, tmp_path, monkeypatch):
    net, params, m = small
    path = m.export(tmp_path / "net.so")
    before = path.read_bytes(), Path(str(path) + ".json").read_text()

    def disk_full(self, name, **kw):
        Path(name).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(m.executable), "export_library", disk_full)
    with pytest.raises(convc.ConvcError, match="cannot write the module: the disk is full"):
        m.export(path)
    assert (path.read_bytes(), Path(str(path) + ".json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.so", "net.so.json"]


def _load_in_a_child(path):
    """convc.load in a new process: a crash (SIGBUS) shows as a negative return code."""
    return subprocess.run([sys.executable, "-c", f"import convc; convc.load({str(path)!r})"],
                          capture_output=True, text=True, timeout=120)


def test_load_refuses_a_truncated_or_modified_library(exported, tmp_path):
    data = exported.read_bytes()
    cut = tmp_path / "cut.so"
    cut.write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.so.json").write_text(Path(str(exported) + ".json").read_text())
    with pytest.raises(convc.ConvcError, match="cut short or replaced"):
        convc.load(cut)
    (tmp_path / "cut.so.json").unlink()          # without the sidecar: the ELF headers tell
    done = _load_in_a_child(cut)
    assert done.returncode == 1 and "cut short" in done.stderr, done.stderr
    edited = tmp_path / "edited.so"
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    edited.write_bytes(bytes(flipped))
    (tmp_path / "edited.so.json").write_text(Path(str(exported) + ".json").read_text())
    with pytest.raises(convc.ConvcError, match="SHA-256 differs"):
        convc.load(edited)


@pytest.mark.parametrize("edit, key", [
    (lambda meta: dict(meta, batch=7), "'batch'"),
    (lambda meta: dict(meta, network=meta["network"].replace("c1", "cX").replace("l2", "c1").replace("cX", "l2")),
     "'network'"),
])
def test_a_sidecar_that_disagrees_with_the_embedded_metadata_is_an_error(exported, tmp_path, edit, key):
    copy = tmp_path / "m.so"
    copy.write_bytes(exported.read_bytes())
    meta = json.loads(Path(str(exported) + ".json").read_text())
    (tmp_path / "m.so.json").write_text(json.dumps(edit(meta)))
    with pytest.raises(convc.ConvcError, match=f"disagrees with the metadata embedded in m.so on {key}"):
        convc.load(copy)


def test_a_sidecar_that_is_not_json_is_an_error(exported, tmp_path):
    copy = tmp_path / "m.so"
    copy.write_bytes(exported.read_bytes())
    (tmp_path / "m.so.json").write_text("{not json")
    with pytest.raises(convc.ConvcError, match="sidecar is not readable JSON"):
        convc.load(copy)


@pytest.fixture(scope="module")
def cli_files(exported):
    d = exported.parent
    (d / "small.conv").write_text(SMALL)
    net = convc.parse(SMALL, "small.conv")
    np.save(d / "x.npy", _x(net, 2))
    return d


def test_run_writes_exactly_the_output_path(cli_files):
    d = cli_files
    done = convc_cli("run", d / "small.so", "--input", d / "x.npy", "-o", d / "y.out")
    assert done.returncode == 0, done.stderr
    assert (d / "y.out").exists() and not (d / "y.out.npy").exists()
    assert np.load(d / "y.out").shape == (2, 5)


@pytest.mark.parametrize("target, message", [
    ("missing/y.npy", "the directory {d}/missing does not exist"),
    ("", "is a directory"),
    ("/proc/y.npy", "cannot write the output"),
])
def test_run_output_errors(cli_files, target, message):
    d = cli_files
    out = target if target.startswith("/") else d / target
    done = convc_cli("run", d / "small.so", "--input", d / "x.npy", "-o", out)
    assert_user_error(done, message.format(d=d))


@pytest.mark.parametrize("target, message", [
    ("missing/m.so", "the directory {d}/missing does not exist"),
    ("", "is a directory"),
    ("/proc/m.so", "cannot write the module"),
])
def test_build_output_errors(cli_files, target, message):
    d = cli_files
    out = target if target.startswith("/") else d / target
    done = convc_cli("build", d / "small.conv", "--no-records", "-o", out)
    assert_user_error(done, message.format(d=d))


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_build_on_a_really_full_disk_keeps_the_previous_pair(cli_files, exported, small_disk):
    target = small_disk / "net.so"
    target.write_bytes(exported.read_bytes())          # 160 KiB of the 200: no room for another
    Path(str(target) + ".json").write_text(Path(str(exported) + ".json").read_text())
    before = sorted((p.name, p.read_bytes()) for p in small_disk.iterdir())
    done = convc_cli("build", cli_files / "small.conv", "--no-records", "-o", target)
    assert_user_error(done, "cannot write the module: the disk is full")
    assert sorted((p.name, p.read_bytes()) for p in small_disk.iterdir()) == before
    convc.load(target)


def test_run_output_disk_full_keeps_the_old_file(tmp_path, monkeypatch):
    from convc.files import write_bytes_atomically
    out = tmp_path / "y.npy"
    out.write_bytes(b"old")

    def fill(f):
        f.write(b"new, partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(convc.ConvcError, match="the disk is full"):
        write_bytes_atomically(out, fill)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["y.npy"]


# ----------------------------------------------------------------------------- 5. bounded work
def _max_rss_of(code: str) -> tuple[int, subprocess.CompletedProcess]:
    """Peak memory (bytes) of a child running `code`: VmHWM, which (unlike ru_maxrss) does not
    carry over the forked parent's size."""
    script = code + ("\nimport re, sys\n"
                     "print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    return int(done.stderr.strip().splitlines()[-1]) * 1024, done


def test_prototxt_long_string_memory_is_linear(tmp_path):
    big = tmp_path / "big.prototxt"
    big.write_text('name: "' + "a" * 10_000_000 + '"\n')
    rss, done = _max_rss_of(f"from convc.importers import prototxt\n"
                            f"m = prototxt.parse(open({str(big)!r}).read())\nassert len(m.fields[0].value.value) == 10**7")
    assert done.returncode == 0, done.stderr
    assert rss < 400 * 2**20, f"{rss / 2**20:.0f} MiB for a 10 MB string"


@pytest.mark.slow
def test_prototxt_100_mb_string_under_1_gb(tmp_path):
    big = tmp_path / "big.prototxt"
    big.write_text('name: "' + "a" * 100_000_000 + '"\nlayer { name: "r" type: "ReLU" }\n')
    rss, done = _max_rss_of(f"from convc.importers import prototxt\nprototxt.parse(open({str(big)!r}).read())")
    assert done.returncode == 0, done.stderr
    assert rss < 2**30, f"{rss / 2**20:.0f} MiB for a 100 MB string"


def test_prototxt_nesting_limit():
    from convc.importers import prototxt
    deep = "a " + "{ a " * 1000 + "{ }" + "}" * 1000
    with pytest.raises(convc.ConvcError, match=f"nest more than {prototxt.MAX_DEPTH} deep") as info:
        prototxt.parse(deep, "deep.prototxt")
    assert info.value.line == 1 and info.value.col == 2 + 4 * prototxt.MAX_DEPTH + 1
    ok = "a " + "{ a " * 50 + "{ }" + "}" * 50 + '\nb: "{{{{" # {{{{'
    assert prototxt.parse(ok).names() == ["a", "b"]


def test_prototxt_size_limit(monkeypatch):
    from convc.importers import prototxt
    monkeypatch.setattr(prototxt, "MAX_CHARS", 100)
    with pytest.raises(convc.ConvcError, match="convc reads prototxt files of at most 100"):
        prototxt.parse('name: "' + "a" * 200 + '"', "big.prototxt")


def test_prototxt_line_ends_and_bom():
    from convc.importers import prototxt
    with pytest.raises(convc.ConvcError) as info:
        prototxt.parse("\ufeffa: 1\r\nb: 2\rc: }\n", "x.prototxt")
    assert (info.value.line, info.value.col) == (3, 4)


def test_diagnostics_are_capped_and_quote_a_bounded_excerpt():
    keys = " ".join(f"k{i}=1" for i in range(4000))
    with pytest.raises(convc.ConvcError) as info:
        convc.parse(f"input x 3x8x8\nconv c filters=2 size=3 {keys}\n")
    text = str(info.value)
    assert len(info.value.diagnostics) == 4000
    assert "... and 3950 more errors (the first 50 are shown)" in text
    assert text.count("error: unknown key") == 50
    assert len(text) < 50 * 600
    k3999 = " ".join(f"k{i}=1" for i in range(3999))
    last = convc.errors.ConvcError(info.value.diagnostics[-1]).render().splitlines()
    assert last[1].startswith("...") and "k3999=1" in last[1] and last[2].index("^") == last[1].index("k3999")
    assert len(k3999) > 1000


def test_fused_kernels_stay_small_on_a_long_chain():
    lines = ["input x 4x4x4"] + [f"linear a{i} a=1.001 b=0.01" for i in range(100)]
    net = convc.parse("\n".join(lines) + "\n")
    m = convc.compile(net, "llvm", records=None)
    per_launch = [len(layers) / m.report.launches[k] for k, layers in m.report.kernels.items()]
    assert max(per_launch) <= build.MAX_FUSED
    assert sum(m.report.launches.values()) >= 100 // build.MAX_FUSED
    x = _x(net, 1)
    np.testing.assert_allclose(m(x), oracle.run(net, x, {}), rtol=1e-4)


def test_tvm_compile_does_not_fuse_the_kernels_again():
    import tvm
    from tvm import relax
    lines = ["input x 4x4x4"] + [f"linear a{i} a=1.001 b=0.01" for i in range(40)]
    net = convc.parse("\n".join(lines) + "\n")
    info = build.make_target("llvm")
    fused, report, _ = build.lower_network(net, info, 1, records=None)
    with info.target:
        after = relax.get_default_pipeline(info.target)(build.final_kernels(fused))
    kernels = [gv for gv, f in after.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(kernels) == len(report.kernels)


@pytest.mark.slow
def test_a_10000_layer_chain_checks_in_minutes(tmp_path):
    import time
    lines = ["network chain", "input x 4x8x8"] + [
        f"relu a{i}" if i % 2 else f"conv c{i} filters=4 size=3 pad=1" for i in range(10_000)]
    (tmp_path / "chain.conv").write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    done = convc_cli("info", tmp_path / "chain.conv")
    assert done.returncode == 0 and time.perf_counter() - started < 60
    done = convc_cli("check", tmp_path / "chain.conv", "--no-records")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "all 10001 outputs match" in done.stdout
    assert time.perf_counter() - started < 900


# ----------------------------------------------------------------------------- 6. user errors
def test_params_errors(cli_files, tmp_path):
    d = cli_files
    np.save(tmp_path / "p.npy", np.zeros(3))
    assert_user_error(convc_cli("check", d / "small.conv", "--params", tmp_path / "p.npy"),
                      "holds one array, not a set of named parameters")
    net = convc.parse(SMALL)
    np.savez(tmp_path / "full.npz", **net.init_params(0))
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert_user_error(convc_cli("check", d / "small.conv", "--params", tmp_path / "cut.npz"),
                      "cannot read parameters from it")
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    assert_user_error(convc_cli("run", d / "small.so", "--input", tmp_path / "x.npz"), "is an .npz archive")


@pytest.mark.parametrize("args, message", [
    (["--batch", "-1"], "--batch: must be a positive integer"),
    (["--batch", "0"], "--batch: must be a positive integer"),
    (["--batch", "1000000000"], "batch 1000000000 makes a tensor of"),
    (["--batch", "1000000"], "GiB for the layer outputs"),
    (["--seed", "-1"], "--seed: must be a non-negative integer"),
    (["--target", "cuda", "--arch", "sm_xx"], "unknown CUDA architecture 'sm_xx'"),
    (["--arch", "sm_80"], "applies to the cuda target only"),
])
def test_check_argument_errors(cli_files, args, message):
    assert_user_error(convc_cli("check", cli_files / "small.conv", *args), message)


def test_compile_argument_errors(small):
    net = small[0]
    with pytest.raises(convc.ConvcError, match="records must be"):
        convc.compile(net, records=5)
    with pytest.raises(convc.ConvcError, match="dtype 'int8' is not supported"):
        convc.compile(net, dtype="int8")
    with pytest.raises(convc.ConvcError, match="seed must be a non-negative integer"):
        from convc.check import check
        check(net, seed=-1)


def test_read_only_and_torch_inputs(small):
    torch = pytest.importorskip("torch")
    net, params, m = small
    x = _x(net, 2)
    want = m(x)
    aligned = np.empty(x.size + 64, np.float32)
    offset = (-aligned.ctypes.data % 64) // 4
    ro = aligned[offset: offset + x.size].reshape(x.shape)
    ro[...] = x
    ro.flags.writeable = False
    assert ro.ctypes.data % 64 == 0
    np.testing.assert_array_equal(m(ro), want)
    np.testing.assert_allclose(m(torch.from_numpy(x).to(torch.bfloat16)), m(torch.from_numpy(x).to(torch.bfloat16)
                                                                            .float().numpy()), rtol=0)
    np.testing.assert_array_equal(m(torch.from_numpy(x).requires_grad_()), want)


def test_torch_params_bfloat16_and_requires_grad(small):
    torch = pytest.importorskip("torch")
    net, params, _ = small
    m = convc.compile(net, "llvm", batch=2, records=None)
    x = _x(net, 2)
    grad = {k: torch.from_numpy(v).requires_grad_() for k, v in params.items()}
    np.testing.assert_array_equal(m(x, grad), m(x, params))
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in params.items()}
    as_f32 = {k: v.float().numpy() for k, v in bf16.items()}
    np.testing.assert_array_equal(m(x, bf16), m(x, as_f32))


def test_time_of_a_cuda_module_without_cuda(small):
    import tvm
    if tvm.cuda().exist:
        pytest.skip("this machine has a CUDA device")
    net = small[0]
    m = convc.compile(net, "cuda", batch=2, records=None)
    with pytest.raises(convc.ConvcError, match="no CUDA device"):
        m.time(_x(net, 2), small[1])


def test_an_import_with_no_layers_is_an_error(tmp_path):
    (tmp_path / "empty.prototxt").write_text('name: "e"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\n'
                                             'input_dim: 8\ninput_dim: 8\n')
    assert_user_error(convc_cli("import", "caffe", tmp_path / "empty.prototxt"), "nothing to import")


def _interrupt_while_importing(module: str, tmp_path) -> subprocess.CompletedProcess:
    """Run `convc check` and deliver SIGINT the moment it starts importing `module`."""
    (tmp_path / "n.conv").write_text(SMALL)
    script = (
        "import os, signal, sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r}:\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from convc.cli import main\n"
        f"sys.exit(main(['check', {str(tmp_path / 'n.conv')!r}]))\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["numpy", "tvm"])
def test_ctrl_c_during_start_up(module, tmp_path):
    done = _interrupt_while_importing(module, tmp_path)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "interrupted"


def test_import_convc_cli_loads_no_numpy():
    done = subprocess.run([sys.executable, "-c", "import sys, convc.cli; print('numpy' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


# ----------------------------------------------------------------------------- text
def test_a_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.conv"
    path.write_bytes(b"\xef\xbb\xbfnetwork a\r\ninput x 3x8x8\rconv c filters=2 size=3\n")
    net = convc.parse_file(path)
    assert net.name == "a" and [layer.name for layer in net.layers] == ["c"]


@pytest.mark.parametrize("char, name", [("\u2028", "line separator (U+2028)"), ("\x85", "next line (U+0085)"),
                                        ("\f", "form feed (U+000C)"), ("\v", "vertical tab (U+000B)")])
def test_only_cr_and_lf_end_a_line(char, name):
    with pytest.raises(convc.ConvcError) as info:
        convc.parse(f"network a\ninput x 3x8x8\nconv c filters=2 size=3{char}relu r\n", "n.conv")
    assert f"n.conv:3:24: error: {name} inside a line" in str(info.value)
