"""convc: a compiler for convolutional networks written in the .conv language.

    net = convc.parse_file("net.conv")     # parse + check shapes (stage 1 and 2)
    y = convc.oracle.run(net, x, params)   # NumPy reference
    m = convc.compile(net, target="llvm")  # TVM build
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConvcError, Source, file_error

# Everything else loads on first use: `import convc` (and so the `convc` command's start-up,
# where a Ctrl-C must end quietly) imports no NumPy, Lark or TVM.
_LAZY = {"LAYER_KINDS": "layers", "ACTIVATIONS": "layers", "Network": "network", "Layer": "network",
         "compile": "build", "load": "build", "Module": "build", "tune": "tuning"}
_SUBMODULES = ("oracle", "importers")

__all__ = ["parse", "parse_file", "oracle", "ConvcError", "Network", "Layer", "compile", "load",
           "LAYER_KINDS", "ACTIVATIONS"]
__version__ = "0.1.0"


def parse(text: str, filename: str = "<input>") -> Network:
    """Parse and check a network; raises ConvcError listing every problem found."""
    from .network import build_network
    from .parser import decode, parse_statements
    if isinstance(text, bytes):
        text = decode(text, filename)
    source = Source(text, filename)
    return build_network(parse_statements(source), source)


def parse_file(path) -> Network:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise file_error(path, "no such file") from None
    except IsADirectoryError:
        raise file_error(path, "is a directory, not a .conv file") from None
    except OSError as err:
        raise file_error(path, f"cannot read the file ({err.strerror})") from None
    from .parser import decode
    return parse(decode(data, str(path)), filename=str(path))


def __getattr__(name):
    # The TVM stages load lazily: `import convc` stays fast for parsing and the oracle.
    import importlib
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)
