"""Tuning that pays off in minutes: --budget, Ctrl-C, the kept cost model, seeds from other
CPUs' records, and records files that are damaged (never a traceback, never a slower schedule)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import convc
from convc import tuning
from convc.cli import main

TINY = """
network tiny
input data 8x8x8
conv c1 filters=8 size=3 pad=1 neuron=relu
"""


@pytest.fixture(scope="module")
def net():
    return convc.parse(TINY, "tiny.conv")


@pytest.fixture(scope="module")
def budgeted(net, tmp_path_factory):
    """A short budgeted run: the defaults are measured, then one round of the search (always)."""
    directory = tmp_path_factory.mktemp("budgeted")
    result = convc.tune(net, "llvm", budget="3s", records=directory, progress=False, per_iter=4)
    return directory, result


def _conv_file(tmp_path) -> str:
    (tmp_path / "tiny.conv").write_text(TINY)
    return str(tmp_path / "tiny.conv")


def _has_records(directory: Path) -> bool:
    path = directory / tuning.RECORDS
    return path.exists() and path.read_text().count("\n") >= 1


# ----------------------------------------------------------------------------- budget
@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("1.5h", 5400), ("45", 45),
                                           (" 2m ", 120), (30, 30)])
def test_budget_parses(text, seconds):
    assert tuning.parse_budget(text) == seconds


@pytest.mark.parametrize("text, message", [("0", "more than zero"), ("0s", "more than zero"), ("5x", "90s, 10m or 1h"),
                                           ("", "90s, 10m or 1h"), ("-1m", "90s, 10m or 1h"), ("m", "90s, 10m or 1h"),
                                           ("1e3", "90s, 10m or 1h")])
def test_bad_budgets_are_refused(text, message):
    with pytest.raises(convc.ConvcError, match=message):
        tuning.parse_budget(text)


@pytest.mark.parametrize("args, message", [(["--budget", "0"], "--budget must be more than zero"),
                                           (["--budget", "5x"], "--budget wants a duration such as 90s"),
                                           (["--budget", "1m", "--trials", "3"], "give --trials or --budget, not both"),
                                           (["--trials", "0"], "--trials must be at least 1")])
def test_cli_budget_errors_exit_2(args, message, tmp_path, capsys):
    assert main(["tune", _conv_file(tmp_path), "--records", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r" / tuning.RECORDS).exists()      # refused before any work


def test_a_budgeted_run_writes_loadable_records_and_verdicts(net, budgeted):
    directory, result = budgeted
    assert result.stopped == "budget"
    db = tuning.open_database(directory, write=False)
    assert len(db) >= 4                          # the first round of the search always runs
    (verdict,) = tuning.load_verdicts(directory).values()
    assert verdict["kernel"] == "c1" and verdict["default_s"] > 0 and isinstance(verdict["keep"], bool)
    rows = tuning.read_history(directory)
    assert rows[0]["source"] == "default" and rows[0]["elapsed_s"] > 0
    assert result.first_trial_s is not None and "first measured candidate after" in result.table()
    m = convc.compile(net, "llvm", records=directory)
    assert m.report.tuned == (["c1"] if verdict["keep"] else [])


@pytest.mark.slow       # a whole tuning process, ~40 s on a loaded 2-core machine
def test_ctrl_c_keeps_the_records_and_writes_the_verdicts(tmp_path):
    directory = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "convc.cli", "tune", _conv_file(tmp_path), "--budget", "10m",
                             "--records", str(directory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not _has_records(directory):
            time.sleep(0.2)
        assert _has_records(directory), "no record measured in 180 s"
        proc.send_signal(signal.SIGINT)          # the search stops at its next round
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert "records and verdicts kept" in out
    assert len(tuning.open_database(directory, write=False)) >= 1
    (verdict,) = tuning.load_verdicts(directory).values()
    assert "default_s" in verdict


# ----------------------------------------------------------------------------- the cost model
def test_the_cost_model_is_saved_and_reloaded_on_resume(net, budgeted, tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(budgeted[0], directory)
    assert (directory / tuning.MODEL_DATA).exists() and (directory / tuning.MODEL_TREES).exists()
    saved = tuning.load_cost_model(directory, "auto")
    assert saved.data_size == 4 and saved.booster is not None     # the first round's 4 trials
    convc.tune(net, "llvm", trials=3, records=directory, progress=False)      # resumes with the saved model
    assert tuning.load_cost_model(directory, "auto").data_size == 4 + 3
    assert tuning.load_cost_model(directory, "fresh").data_size == 0


def test_a_damaged_cost_model_is_a_clear_error(tmp_path):
    (tmp_path / tuning.MODEL_DATA).write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(convc.ConvcError, match="the saved cost model does not load"):
        tuning.load_cost_model(tmp_path, "auto")


def test_a_pretrained_model_loads_on_a_machine_with_no_records(net, budgeted, tmp_path, capsys):
    fitted = tuning.pretrain_cost_model([budgeted[0]], tmp_path / "model")
    model = tuning.load_cost_model(tmp_path / "new", tmp_path / "model")     # a records directory with nothing
    assert model.data_size == fitted >= 4 and model.booster is not None
    assert all(group.startswith("llvm-") for group in model.data)      # groups never mix CPUs
    assert tuning.load_cost_model(tmp_path / "new", "auto").data_size == 0      # nothing saved there: fresh
    assert main(["tune", _conv_file(tmp_path), "--records", str(tmp_path / "r"), "--trials", "1",
                 "--cost-model", str(tmp_path / "nothing")]) == 2
    assert "no saved cost model here" in capsys.readouterr().err


# ----------------------------------------------------------------------------- other CPUs' records
def _as_other_cpu(source: Path, directory: Path, name="llvm-othercpu") -> Path:
    shutil.copytree(source, directory)
    recorded = json.loads((directory / "target.json").read_text())
    (directory / "target.json").write_text(json.dumps({"target": name, "config": recorded["config"]}))
    return directory


def test_seed_records_are_measured_here_never_applied(net, budgeted, tmp_path, monkeypatch):
    root = tmp_path / "schedules"
    root.mkdir()
    other = _as_other_cpu(budgeted[0], root / "llvm-othercpu")
    monkeypatch.setattr(tuning, "SCHEDULES", root)
    info = convc.build.make_target("llvm")
    # a build here does not use them, and says what exists and how to tune
    m = convc.compile(net, "llvm")
    assert m.report.tuned == [] and m.report.records == []
    hint = m.report.describe(net)
    assert "record sets exist for llvm-othercpu" in hint and "convc tune NET --budget 10m" in hint
    assert "same vector ISA" in hint
    with pytest.raises(convc.ConvcError, match="records are for llvm-othercpu"):
        convc.compile(net, "llvm", records=other)
    # a tune here measures them as starting candidates
    assert tuning.same_isa_sets(info) == {"llvm-othercpu": other}
    result = convc.tune(net, "llvm", trials=1, records=tmp_path / "mine", progress=False)
    assert result.seeds >= 1
    seeded = [r for r in tuning.read_history(tmp_path / "mine") if r["source"] == "seed"]
    assert seeded and all(r["best_s"] > 0 for r in seeded)


def test_seed_records_must_be_a_records_directory(net, tmp_path):
    with pytest.raises(convc.ConvcError, match="no tuning records here"):
        convc.tune(net, "llvm", trials=1, records=tmp_path / "r", seed_records=[tmp_path], progress=False)


# ----------------------------------------------------------------------------- damaged files
def test_a_corrupt_target_json_is_a_clear_error(net, budgeted, tmp_path, capsys):
    directory = tmp_path / "t"
    shutil.copytree(budgeted[0], directory)
    (directory / "target.json").write_text("{not json")
    with pytest.raises(convc.ConvcError, match="target.json: error: is not valid JSON"):
        convc.compile(net, "llvm", records=directory)
    assert main(["tune", _conv_file(tmp_path), "--records", str(directory), "--trials", "1"]) == 2
    assert "target.json" in capsys.readouterr().err
    (directory / "target.json").write_text("[1, 2]")
    with pytest.raises(convc.ConvcError, match='has no "target" name'):
        convc.compile(net, "llvm", records=directory)


@pytest.mark.parametrize("garbage", ['{"a": 1}', "[0, 1, 2]", '[0, "garbage"]', "[99, [[[], []], [1e-5], {}, []]]",
                                     '[0, [[[["Split", 1, 2, 3]], []], ["fast"], {}, []]]', "\x00\x01"])
def test_a_corrupt_records_line_is_dropped(net, budgeted, tmp_path, garbage):
    directory = tmp_path / "r"
    shutil.copytree(budgeted[0], directory)
    before = len(tuning.open_database(directory, write=False))
    with open(directory / tuning.RECORDS, "a") as f:
        f.write(garbage + "\n")
    assert len(tuning.open_database(directory, write=False)) == before
    convc.compile(net, "llvm", records=directory)            # builds; the line is ignored
    assert tuning.repair(directory) and len(tuning.open_database(directory)) == before


@pytest.mark.parametrize("garbage, message", [("{oops", "is not valid JSON"), ("[]", "is not a JSON object"),
                                               ('{"123": {"kernel": "c1"}}', 'without a true/false "keep"'),
                                               ('{"123": {"keep": "yes"}}', 'without a true/false "keep"')])
def test_garbage_kernels_json_never_brings_back_a_slower_schedule(net, budgeted, tmp_path, capsys, garbage, message):
    directory = tmp_path / "k"
    shutil.copytree(budgeted[0], directory)
    (directory / tuning.VERDICTS).write_text(garbage)
    with pytest.raises(convc.ConvcError, match=message):
        convc.compile(net, "llvm", records=directory)
    conv = _conv_file(tmp_path)
    out = tmp_path / "m.so"
    assert main(["build", conv, "-o", str(out), "--records", str(directory)]) == 2
    err = capsys.readouterr().err
    assert "kernels.json" in err and "help:" in err and not out.exists()


def test_a_record_without_a_verdict_is_not_used(net, budgeted, tmp_path):
    directory = tmp_path / "v"
    shutil.copytree(budgeted[0], directory)
    (directory / tuning.VERDICTS).unlink()
    assert convc.compile(net, "llvm", records=directory).report.tuned == []
    # a verdict made against unscheduled loops (before tuning started from the defaults) neither
    key = tuning.workload_key(convc.build.prim_funcs(convc.build.fuse(convc.build.relax_module(net, 1)))["c1"])[1]
    (directory / tuning.VERDICTS).write_text(json.dumps({key: {"kernel": "c1", "keep": True, "untuned_s": 1.0,
                                                               "tuned_s": 1e-6}}))
    assert convc.compile(net, "llvm", records=directory).report.tuned == []


def test_damaged_history_lines_are_skipped_by_plot(budgeted, tmp_path, capsys):
    directory = tmp_path / "h"
    shutil.copytree(budgeted[0], directory)
    good = len(tuning.read_history(directory))
    with open(directory / tuning.HISTORY, "a") as f:
        f.write('{"kernel": "c1", "tri\n[1, 2]\n{"kernel": 5}\n')
    assert len(tuning.read_history(directory)) == good
    assert "skipped 3 unreadable lines" in capsys.readouterr().err
    out = tuning.plot_history(directory, tmp_path / "curve.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    (directory / tuning.HISTORY).write_text("garbage\n")
    assert main(["plot", str(directory), "-o", str(tmp_path / "x.png")]) == 2
    assert "no readable tuning history" in capsys.readouterr().err


def _keep_every_record(directory: Path):
    verdicts = tuning.load_verdicts(directory)
    for verdict in verdicts.values():
        verdict.update(keep=True)
    (directory / tuning.VERDICTS).write_text(json.dumps(verdicts))


def test_a_workload_line_tvm_cannot_read_is_a_clear_error(net, budgeted, tmp_path, capsys):
    directory = tmp_path / "w"
    shutil.copytree(budgeted[0], directory)
    _keep_every_record(directory)
    # the kernel's own workload keeps its hash but is not a kernel TVM can load
    lines = (directory / tuning.WORKLOADS).read_text().splitlines()
    (directory / tuning.WORKLOADS).write_text("".join(json.dumps([json.loads(line)[0], "AAAA"]) + "\n"
                                                      for line in lines))
    with pytest.raises(convc.ConvcError, match="the tuning records do not load"):
        convc.compile(net, "llvm", records=directory)
    with pytest.raises(convc.ConvcError, match="the tuning records do not load"):
        convc.tune(net, "llvm", trials=1, records=directory, progress=False)
    assert main(["build", _conv_file(tmp_path), "-o", str(tmp_path / "m.so"), "--records", str(directory)]) == 2
    err = capsys.readouterr().err
    assert "the tuning records do not load" in err and "Traceback" not in err


def test_a_build_loads_only_the_best_record_of_its_own_kernels(net, budgeted, tmp_path):
    directory = tmp_path / "mixed"
    shutil.copytree(budgeted[0], directory)
    _keep_every_record(directory)
    # another kernel's unreadable workload: a build of this network never parses it
    with open(directory / tuning.WORKLOADS, "a") as f:
        f.write('["123", "AAAA"]\n')
    ((key, verdict),) = tuning.load_verdicts(directory).items()
    full = tuning.open_database(budgeted[0], write=False)
    best = tuning.open_best_records(directory, [key])
    assert len(full) >= 4 and len(best) == 1
    funcs = convc.build.prim_funcs(convc.build.fuse(convc.build.relax_module(net, 1)))
    mod, _ = tuning.workload_key(funcs[verdict["kernel"]])
    (top,) = full.get_top_k(full.commit_workload(mod), 1)
    (only,) = best.get_top_k(best.commit_workload(mod), 1)
    assert str(only.trace) == str(top.trace)
    assert [float(s) for s in only.run_secs] == [float(s) for s in top.run_secs]
    valid = len(full.get_top_k(full.commit_workload(mod), 100))     # failed candidates are not records to use
    assert len(tuning.open_best_records(directory, [key], per_workload=3)) == min(3, valid)
    assert len(tuning.open_best_records(directory, ["0"])) == 0
    m = convc.compile(net, "llvm", records=directory)
    assert m.report.tuned == ["c1"]


def test_plot_compares_runs_side_by_side(budgeted, tmp_path, capsys):
    out = tmp_path / "both.png"
    assert main(["plot", str(budgeted[0]), str(budgeted[0]), "--label", "one", "--label", "two",
                 "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(budgeted[0]), "--label", "a", "--label", "b", "-o", str(out)]) == 2
    assert "2 --label for 1 records directories" in capsys.readouterr().err


def test_the_search_curve_continues_the_clock_of_a_resumed_run():
    def row(kernel, trials, elapsed, network_ms, source="search"):
        return {"kernel": kernel, "trials": trials, "elapsed_s": elapsed, "network_s": network_ms / 1e3,
                "best_s": None, "source": source}
    rows = [row("a", 0, 1, 9, "default"), row("b", 0, 2, 8, "default"), row("a", 16, 30, 6),
            row("b", 16, 60, 5),
            row("a", 16, 3, 5, "default"), row("b", 16, 4, 5, "default"), row("a", 32, 30, 4)]  # resumed
    minutes, totals, estimates = tuning._search_curve(rows)
    assert totals == [16, 32, 48]
    assert estimates == pytest.approx([6, 5, 4])
    assert minutes == pytest.approx([0.5, 1.0, 1.5])


def test_the_default_is_timed_as_a_build_runs_it_without_its_weight_relayout():
    """A conv default re-lays its weights out (OIHW -> OIHW16o); a build folds that copy, so a
    verdict must not charge every call with it."""
    net16 = convc.parse(TINY.replace("filters=8", "filters=32"), "tiny32.conv")
    info = convc.build.make_target("llvm")
    fused = convc.build.fuse(convc.build.relax_module(net16, 1))
    (name, func), = convc.build.prim_funcs(fused).items()
    _, scheduled, rule = tuning.default_trace(func, info.target)
    assert rule == "direct_conv"
    deployed = tuning.deployer(fused)(name, scheduled)
    shapes = lambda f: [tuple(int(d) for d in p.ty.shape) for p in f.params]
    assert shapes(scheduled)[1] == (32, 8, 3, 3)
    assert len(shapes(deployed)[1]) == 5 and np.prod(shapes(deployed)[1]) == 32 * 8 * 9
    assert "layout_rewrite_preproc" in scheduled.script() and "layout_rewrite_preproc" not in deployed.script()


def test_verdicts_not_timed_as_deployed_are_not_used(net, budgeted, tmp_path):
    directory = tmp_path / "old"
    shutil.copytree(budgeted[0], directory)
    _keep_every_record(directory)
    assert convc.compile(net, "llvm", records=directory).report.tuned == ["c1"]
    verdicts = tuning.load_verdicts(directory)
    for verdict in verdicts.values():
        del verdict["deployed"]
    (directory / tuning.VERDICTS).write_text(json.dumps(verdicts))
    assert convc.compile(net, "llvm", records=directory).report.tuned == []


def test_a_candidate_may_run_at_most_200_times_the_slowest_default_between_10_and_60_s():
    def kernels(*defaults):
        return [tuning.KernelResult(f"k{i}", [], 1, d, None) for i, d in enumerate(defaults)]
    assert tuning.candidate_timeout(kernels(0.0005, 0.0017)) == 10.0
    assert tuning.candidate_timeout(kernels(0.1, None)) == pytest.approx(20.0)
    assert tuning.candidate_timeout(kernels(2.0)) == 60.0
    assert tuning.candidate_timeout(kernels(None)) == 10.0
