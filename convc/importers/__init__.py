"""`convc import`: networks written for Caffe or cuda-convnet, as .conv with the same meaning.

    from convc import importers
    r = importers.caffe("deploy.prototxt")
    r = importers.cuda_convnet("layers.cfg", "layer-params.cfg", input_shape=(3, 32, 32))
    r.text      # the .conv source
    r.notes     # what was dropped, merged, folded or renamed, one line each
    params = importers.convert_weights(r, dict(np.load("weights.npz", allow_pickle=False)))

Anything that cannot be imported exactly raises one ConvcError listing every problem, with
file, line, column and layer name. See docs/import.md.
"""
from __future__ import annotations

from .common import ImportResult
from .weights import convert_weights, load_npz, save_npz


def caffe(path, text: str | None = None, input_shape=None, phase: str = "TEST", stages=()) -> ImportResult:
    """Import a Caffe .prototxt. `input_shape` (C, H, W) is needed only when the file's input
    is a data layer that does not say its size (a train_val file). `phase` ("TEST" or "TRAIN")
    and `stages` choose layers by their include/exclude rules, as Caffe does."""
    from .from_caffe import import_caffe
    if isinstance(input_shape, str):
        from .from_cuda_convnet import parse_input_shape
        input_shape = parse_input_shape(input_shape)
    return import_caffe(path, text, input_shape, phase, stages)


def cuda_convnet(layers_cfg_path, params_cfg_path=None, input_shape=(3, 32, 32), *,
                 layers_text: str | None = None, params_text: str | None = None) -> ImportResult:
    """Import cuda-convnet's layers.cfg and layer-params.cfg; the data size is not in the
    files, so it is given as `input_shape` (C, H, W) or "CxHxW"."""
    from .from_cuda_convnet import import_cuda_convnet
    return import_cuda_convnet(layers_cfg_path, params_cfg_path, input_shape, layers_text, params_text)


__all__ = ["ImportResult", "caffe", "cuda_convnet", "convert_weights", "load_npz", "save_npz"]
