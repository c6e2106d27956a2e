"""The `convc` command: one subcommand per stage, verbs and flags after TVM's tvmc.

Every user mistake is a ConvcError: printed as `file:line:col: error: ...` and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import ConvcError

EXIT_USAGE = 2
EXIT_INTERNAL = 3


def _net(path):
    import convc
    return convc.parse_file(path)


def cmd_info(args) -> int:
    net = _net(args.file)
    print(json.dumps(net.summary_dict(), indent=2) if args.json else net.summary())
    return 0


def _add_target(p, default="llvm"):
    p.add_argument("--target", default=default, choices=["llvm", "cuda"],
                   help="llvm: this machine's CPU (features detected); cuda: an NVIDIA GPU (default: %(default)s)")
    p.add_argument("--arch", default=None, help="CUDA architecture, e.g. sm_90a (default), sm_80")


def _number(kind, test, wanted):
    """An argparse type: kind(text) that passes `test`, else a usage error saying what is wanted."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{wanted}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{wanted}, got {text!r}")
        return value
    parse.__name__ = wanted
    return parse


POSITIVE_INT = _number(int, lambda v: v >= 1, "must be a positive integer")
NON_NEGATIVE_INT = _number(int, lambda v: v >= 0, "must be a non-negative integer")
POSITIVE_NUMBER = _number(float, lambda v: 0 < v < float("inf"), "must be a positive number")


def _add_batch(p):
    p.add_argument("--batch", type=POSITIVE_INT, default=1, help="batch size the module is built for (default: 1)")


def _add_records(p):
    p.add_argument("--records", "--tuning-records", action="append", default=[], metavar="DIR",
                   help="tuning records to use besides the shipped ones for this target (repeatable)")
    p.add_argument("--no-records", action="store_true", help="ignore every tuning record: every kernel gets its default schedule")


def _lazy(module: str, func: str):
    def run(args):
        import importlib
        return getattr(importlib.import_module(f"convc.{module}"), func)(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convc", description="Compile convolutional networks (.conv) with TVM.")
    parser.add_argument("--version", action="version", version="convc 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="per-layer shapes, groups, params, neurons and MACs")
    p.add_argument("file", help="a .conv file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("check", help="compile, run and compare every layer with the NumPy oracle")
    p.add_argument("file", help="a .conv network")
    _add_target(p)
    _add_batch(p)
    _add_records(p)
    p.add_argument("--params", metavar="NPZ", help="parameters (.npz keyed NAME.weight, ...); default: init_params(seed)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="seed for the input and init_params (default: 0)")
    p.add_argument("--rtol", type=POSITIVE_NUMBER, default=None,
                   help="pass when max|y - oracle| <= RTOL * max|oracle| per layer (default: 1e-4 llvm, 1e-3 cuda)")
    p.set_defaults(run=_lazy("check", "cmd_check"))

    p = sub.add_parser("build", help="compile a network and export a loadable module")
    p.add_argument("file", help="a .conv network")
    p.add_argument("-o", "--output", required=True, help="the module file to write (.so)")
    _add_target(p)
    _add_batch(p)
    _add_records(p)
    p.add_argument("--params", metavar="NPZ", help="bind these parameters into the module as constants")
    p.set_defaults(run=_lazy("build", "cmd_build"))

    p = sub.add_parser("run", help="run a built module")
    p.add_argument("module", help="a module written by `convc build`")
    p.add_argument("--input", "--inputs", required=True, metavar="NPY", help="input array (N, C, H, W), .npy")
    p.add_argument("--params", metavar="NPZ", help="parameters, unless the module has them bound")
    p.add_argument("-o", "--output", metavar="NPY", help="write the output here (.npy)")
    p.add_argument("--time", "--print-time", action="store_true", help="print the median latency over repeated runs")
    p.set_defaults(run=_lazy("build", "cmd_run"))

    p = sub.add_parser("emit", help="print generated code: CUDA source, LLVM assembly or TIR")
    p.add_argument("file", help="a .conv network")
    _add_target(p)
    _add_batch(p)
    p.add_argument("--layer", help="only the kernel that computes this layer")
    p.add_argument("--tir", action="store_true", help="print TensorIR instead of target code")
    _add_records(p)
    p.set_defaults(run=_lazy("build", "cmd_emit"))

    p = sub.add_parser("tune", help="auto-tune every kernel with MetaSchedule, resumable")
    p.add_argument("file", help="a .conv network")
    _add_target(p)
    _add_batch(p)
    p.add_argument("--trials", type=int, default=None, help="total trials over all kernels (default: 200)")
    p.add_argument("--budget", default=None, metavar="TIME",
                   help="tune for this long instead of a number of trials: 90s, 10m, 1h")
    p.add_argument("--per-kernel", type=int, default=None, metavar="M", help="at most M trials per kernel")
    p.add_argument("--records", "-o", "--output", default=None, metavar="DIR",
                   help="records directory, created or resumed (default: schedules/<target>/)")
    p.add_argument("--seed-records", action="append", default=[], metavar="DIR",
                   help="another CPU's records: their best schedules are measured here as starting candidates")
    p.add_argument("--cost-model", default="auto", metavar="DIR|fresh",
                   help="cost model to start from: a directory holding a saved one, or fresh "
                        "(default: the one saved in the records directory, else fresh)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search (default: 0)")
    p.add_argument("--rpc", metavar="HOST:PORT", help="measure on devices registered with this RPC tracker")
    p.add_argument("--key", default=None, help="device key on the RPC tracker")
    p.add_argument("--plot", metavar="PNG", help="draw the tuning curve")
    p.set_defaults(run=_lazy("tuning", "cmd_tune"))

    p = sub.add_parser("plot", help="draw the tuning curve of a records directory, or compare several")
    p.add_argument("records", nargs="+", metavar="DIR",
                   help="records directory; several: their network estimates side by side")
    p.add_argument("--label", action="append", metavar="TEXT",
                   help="name of the curve of each DIR, in order (default: the directory's name)")
    p.add_argument("-o", "--output", default="tuning.png")
    p.set_defaults(run=_lazy("tuning", "cmd_plot"))

    p = sub.add_parser("bench", help="per-kernel and whole-network latency against baselines")
    p.add_argument("file", help="a .conv network")
    _add_target(p)
    _add_batch(p)
    _add_records(p)
    p.add_argument("--against", default="torch,numpy,default",
                   help="baselines, comma separated: torch, numpy, default (convc without records)")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    p.set_defaults(run=_lazy("bench", "cmd_bench"))

    try:
        from .importers import cli as import_cli
        import_cli.add_parser(sub)
    except ImportError:
        pass
    return parser


def main(argv=None) -> int:
    try:      # start-up included: a Ctrl-C while TVM loads ends with 130 and no traceback
        args = build_parser().parse_args(argv)
        os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
        return args.run(args) or 0
    except ConvcError as err:
        print(err, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # `convc info net.conv | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # a bug in convc or TVM, not the user's mistake: exit 3, not 1 (mismatch)
        if os.environ.get("CONVC_DEBUG"):
            raise
        print(f"internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
              "help: this is a bug in convc or TVM; rerun with CONVC_DEBUG=1 for the traceback and report it",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
