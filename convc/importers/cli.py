"""`convc import caffe|cuda-convnet ...`: write the .conv (and optionally the params) of a
network from another framework. Notes go to stderr, the .conv to -o or stdout."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConvcError, Diagnostic


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "import", help="turn a Caffe .prototxt or cuda-convnet .cfg pair into .conv",
        description="Write a .conv network with the same semantics as a Caffe or cuda-convnet "
                    "definition; anything that cannot be imported exactly is reported, all at once.")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)

    c = formats.add_parser("caffe", help="a Caffe .prototxt (deploy or train_val)")
    c.add_argument("prototxt", help="the network definition, e.g. deploy.prototxt")
    c.add_argument("--input", metavar="CxHxW",
                   help="input size, needed only when the input is a data layer without a size")
    c.add_argument("--weights", metavar="MODEL.caffemodel",
                   help="trained weights (binary NetParameter): written as convc params beside -o "
                        "(NET.npz) or to --params-out")
    c.add_argument("--phase", choices=("TEST", "TRAIN"), default="TEST", type=str.upper,
                   help="the phase whose layers to take, by their include/exclude rules (default TEST)")
    c.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="a stage of the net state, for include/exclude rules (repeatable)")
    _common(c)

    k = formats.add_parser("cuda-convnet", help="cuda-convnet's layers.cfg and layer-params.cfg")
    k.add_argument("layers_cfg", help="the layer definition file (layers-*.cfg)")
    k.add_argument("params_cfg", nargs="?", help="the layer parameter file (layer-params-*.cfg); "
                   "needed for rnorm/cmrnorm (scale, pow) and dropout")
    k.add_argument("--input", metavar="CxHxW", required=True,
                   help="the data layer's image size, e.g. 3x32x32 (the cfg files do not hold it)")
    _common(k)
    p.set_defaults(run=run)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="NET.conv", help="write the .conv here (default: stdout)")
    p.add_argument("--params-from", metavar="X.npz",
                   help="trained arrays under the framework's names (see docs/import.md)")
    p.add_argument("--params-out", metavar="P.npz",
                   help="where to write convc's params (default: the -o name with .npz)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the notes")


def run(args) -> int:
    from . import caffe, convert_weights, cuda_convnet, load_npz, save_npz
    weights = getattr(args, "weights", None)
    if weights and args.params_from:
        raise ConvcError(Diagnostic("give --weights or --params-from, not both", filename="convc import"))
    params_out = _params_out(args, args.params_from or weights)
    if args.format == "caffe":
        result = caffe(args.prototxt, input_shape=args.input, phase=args.phase, stages=args.stage)
    else:
        result = cuda_convnet(args.layers_cfg, args.params_cfg, input_shape=args.input)
    params = None
    if args.params_from:
        params = convert_weights(result, load_npz(args.params_from), filename=args.params_from,
                                 notes=result.notes)
    elif weights:
        from .caffemodel import read_caffemodel
        params = convert_weights(result, read_caffemodel(weights), filename=weights, notes=result.notes,
                                 caffemodel=True)
    if not args.quiet:
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
    _write(args.output, result.text)
    if params is not None:
        save_npz(params_out, params)
        print(f"wrote {len(params)} arrays to {params_out}", file=sys.stderr)
    return 0


def _params_out(args, arrays_from):
    if not arrays_from:
        if args.params_out:
            raise ConvcError(Diagnostic("--params-out needs --params-from or --weights (the arrays to convert)",
                                        filename="convc import"))
        return None
    if args.params_out:
        return args.params_out
    if args.output:
        return str(Path(args.output).with_suffix(".npz"))
    flag = "--params-from" if args.params_from else "--weights"
    raise ConvcError(Diagnostic(f"{flag} needs --params-out (or -o, to write NAME.npz beside it)",
                                filename="convc import"))


def _write(path, text: str) -> None:
    if not path:
        sys.stdout.write(text)
        return
    try:
        Path(path).write_text(text)
    except OSError as err:
        raise ConvcError(Diagnostic(f"cannot write the .conv ({err.strerror})", filename=str(path))) from None
