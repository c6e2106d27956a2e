"""Tuning: a tiny net with a handful of trials; resume; killed runs; records tied to their
target; verdicts that keep the default schedule; distributed tuning over TVM's RPC tracker."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import convc
from convc import tuning

TINY = """
network tiny
input data 8x8x8
conv c1 filters=8 size=3 pad=1 neuron=relu
"""


def _records_lines(directory: Path) -> int:
    path = directory / tuning.RECORDS
    return len(path.read_text().splitlines()) if path.exists() else 0


def _stored_defaults(net) -> int:
    """Kernels whose default schedule is stored as a record before the search (see tuning.stored_default)."""
    info = convc.build.make_target("llvm")
    funcs = convc.build.prim_funcs(convc.build.fuse(convc.build.relax_module(net, 1)))
    return sum(tuning.stored_default(tuning.default_trace(f, info.target)[0]) for f in funcs.values())


@pytest.fixture(scope="module")
def net():
    return convc.parse(TINY, "tiny.conv")


@pytest.fixture(scope="module")
def tuned(net, tmp_path_factory):
    directory = tmp_path_factory.mktemp("records")
    result = convc.tune(net, "llvm", trials=4, records=directory, progress=False)
    return directory, result


def _x(net, batch=1):
    return np.random.default_rng(5).standard_normal((batch, *net.input_shape)).astype(np.float32)


def test_tune_writes_records_and_a_table(net, tuned):
    directory, result = tuned
    assert _records_lines(directory) == 4 + _stored_defaults(net)     # the default schedule is a record
    verdicts = json.loads((directory / tuning.VERDICTS).read_text())
    (verdict,) = verdicts.values()
    assert verdict["kernel"] == "c1" and verdict["trials"] == 4
    assert verdict["default_s"] > 0
    if verdict["tuned_s"] is None:          # the best record is the stored default itself
        assert verdict["keep"] is False and _stored_defaults(net)
    else:
        assert verdict["keep"] == (verdict["tuned_s"] < tuning.KEEP_MARGIN * verdict["default_s"])
    table = result.table()
    assert "c1" in table and "default ms" in table and "speedup" in table
    assert json.loads((directory / "target.json").read_text())["target"].startswith("llvm-")
    assert (directory / "logs").is_dir() and any((directory / "logs").iterdir())


def test_a_build_with_records_gives_the_oracle_answer(net, tuned):
    directory, _ = tuned
    params = net.init_params(1)
    m = convc.compile(net, "llvm", batch=1, records=directory)
    verdict = next(iter(json.loads((directory / tuning.VERDICTS).read_text()).values()))
    assert m.report.tuned == (["c1"] if verdict["keep"] else [])
    x = _x(net)
    np.testing.assert_allclose(m(x, params), convc.oracle.run(net, x, params), rtol=1e-4, atol=1e-5)
    # other shapes (another batch) have no record: they stay untuned, and say so
    other = convc.compile(net, "llvm", batch=3, records=directory)
    assert other.report.untuned == ["c1"] and "untuned" in other.report.describe(net)


def test_a_tuned_kernel_slower_than_the_default_is_not_used(net, tuned, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(tuned[0], directory)
    verdicts = json.loads((directory / tuning.VERDICTS).read_text())
    for verdict in verdicts.values():
        verdict.update(keep=False, tuned_s=verdict["default_s"] * 2)
    (directory / tuning.VERDICTS).write_text(json.dumps(verdicts))
    assert convc.compile(net, "llvm", records=directory).report.tuned == []
    for verdict in verdicts.values():
        verdict.update(keep=True)
    (directory / tuning.VERDICTS).write_text(json.dumps(verdicts))
    assert convc.compile(net, "llvm", records=directory).report.tuned == ["c1"]


def test_records_for_another_target_are_refused(net, tuned, tmp_path):
    directory = tmp_path / "other"
    shutil.copytree(tuned[0], directory)
    (directory / "target.json").write_text(json.dumps({"target": "llvm-cortex-a72"}))
    with pytest.raises(convc.ConvcError, match="records are for llvm-cortex-a72"):
        convc.compile(net, "llvm", records=directory)
    with pytest.raises(convc.ConvcError, match="no such records directory"):
        convc.compile(net, "llvm", records=tmp_path / "missing")


def test_resume_adds_trials(net, tuned, tmp_path):
    directory = tmp_path / "resume"
    shutil.copytree(tuned[0], directory)
    before = _records_lines(directory)
    convc.tune(net, "llvm", trials=3, records=directory, progress=False)
    assert _records_lines(directory) == before + 3
    (verdict,) = json.loads((directory / tuning.VERDICTS).read_text()).values()
    assert verdict["trials"] == 4 + 3


def test_a_torn_last_line_is_dropped_and_the_database_loads(net, tuned, tmp_path):
    directory = tmp_path / "torn"
    shutil.copytree(tuned[0], directory)
    with open(directory / tuning.RECORDS, "a") as f:
        f.write('[0, [[["GetSBlock", [], ["c1')          # a write cut off by a kill
    with open(directory / tuning.WORKLOADS, "a") as f:
        f.write('["12345", "AAAA')
    torn = (directory / tuning.RECORDS).read_bytes()
    # a build reads around the torn line and leaves the files alone (a tune may be appending)
    assert len(convc.compile(net, "llvm", records=directory).report.kernels) == 1
    assert (directory / tuning.RECORDS).read_bytes() == torn
    assert tuning.repair(directory)
    assert _records_lines(directory) == 4 + _stored_defaults(net)
    db = tuning.open_database(directory)
    assert len(db) == 4 + _stored_defaults(net)
    m = convc.compile(net, "llvm", records=directory)
    assert len(m.report.tuned) + len(m.report.untuned) == 1


def test_a_killed_tune_leaves_a_database_that_loads(net, tmp_path):
    (tmp_path / "tiny.conv").write_text(TINY)
    directory = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "convc.cli", "tune", str(tmp_path / "tiny.conv"),
                             "--trials", "64", "--records", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and _records_lines(directory) < 1:
            time.sleep(0.5)
        assert _records_lines(directory) >= 1, "the tuning run wrote no record in 120 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    db = tuning.open_database(directory)
    assert len(db) >= 1
    convc.compile(net, "llvm", records=directory)          # loads and builds


def test_plot(tuned, tmp_path):
    out = tuning.plot_history(tuned[0], tmp_path / "curve.png")
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(convc.ConvcError, match="no tuning history"):
        tuning.plot_history(tmp_path, tmp_path / "none.png")


def test_cli_tune_errors(tmp_path):
    (tmp_path / "tiny.conv").write_text(TINY)
    for args, message in [(["--trials", "0"], "--trials must be at least 1"),
                          (["--target", "cuda"], "needs a GPU"),
                          (["--rpc", "nohost", "--key", "k"], "HOST:PORT")]:
        done = subprocess.run([sys.executable, "-m", "convc.cli", "tune", str(tmp_path / "tiny.conv"),
                               "--records", str(tmp_path / "r"), *args], capture_output=True, text=True, timeout=120)
        if args[0] == "--target" and "needs a GPU" not in done.stderr and done.returncode == 0:
            continue     # a machine with a GPU tunes for real
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- RPC
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_servers(port: int, key: str, count: int, timeout: float) -> None:
    from tvm import rpc
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            summary = rpc.connect_tracker("127.0.0.1", port).summary()
            free = [q for q in summary.get("queue_info", {}).items() if q[0] == key]
            if free and free[0][1].get("free", 0) >= count:
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{count} RPC servers did not register with the tracker in {timeout} s")


def test_distributed_tuning_through_an_rpc_tracker(net, tmp_path):
    """A tracker and two servers on 127.0.0.1; every process started here is stopped."""
    tracker_port, key = _free_port(), "convc-test"
    env = dict(os.environ, TVM_NUM_THREADS="1")
    procs = []

    def start(*args):
        procs.append(subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))

    try:
        start("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(tracker_port),
              "--port-end", str(tracker_port + 1))
        time.sleep(1.5)
        for _ in range(2):
            port = _free_port()      # the servers' default --port-end (9199) would lie below it
            start("tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1),
                  "--tracker", f"127.0.0.1:{tracker_port}", "--key", key, "--no-fork")
        _wait_for_servers(tracker_port, key, 2, timeout=60)
        directory = tmp_path / "rpc"
        result = convc.tune(net, "llvm", trials=4, records=directory, rpc=f"127.0.0.1:{tracker_port}", key=key,
                            progress=False)
        assert _records_lines(directory) == 4
        (kernel,) = result.kernels
        assert kernel.failures < kernel.trials, kernel.first_error
        assert kernel.tuned and kernel.tuned < 1.0
        assert "measured remotely" in result.table() and "c1" in result.table()
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    assert all(proc.poll() is not None for proc in procs)
