"""`convc info`: one row per layer, in the spirit of cuda-convnet's
"Initialized convolutional layer 'conv2', producing 27x27 256-channel output"."""
from __future__ import annotations

from .layers import fmt_shape


# What `convc info` shows in the window column for kinds without a kernel window.
_DETAILS = {
    "slice": lambda a: f"channels [{a['begin']},{a['end']})",
    "crop": lambda a: (f"{fmt_shape(_squash(a['size']))} " if a["size"] else "") + f"offset {fmt_shape(_squash(a['offset']))}",
    "add": lambda a: f"coeff [{','.join(f'{c:g}' for c in a['coeff'])}]" if a.get("coeff") else "",
    "power": lambda a: f"({a['shift']:g} + {a['scale']:g}x)^{a['power']:g}",
    "prelu": lambda a: "shared" if a["shared"] else "",
}


def _geometry(layer) -> str:
    a = layer.attrs
    if layer.kind in _DETAILS:
        return _DETAILS[layer.kind](a)
    if layer.kind == "pool" and a.get("global"):
        return f"{a['mode']} global"
    if "size" not in a or not isinstance(a["size"], tuple):
        return f"size {a['size']} {a['region']}" if layer.kind == "lrn" else ""
    parts = [f"{fmt_shape(a['size'])}"]
    if a.get("stride", (1, 1)) != (1, 1):
        parts.append(f"s{fmt_shape(_squash(a['stride']))}")
    if a.get("pad", (0, 0)) != (0, 0):
        parts.append(f"p{fmt_shape(_squash(a['pad']))}")
    if a.get("dilation", (1, 1)) != (1, 1):
        parts.append(f"d{fmt_shape(_squash(a['dilation']))}")
    if a.get("round") == "ceil" and layer.kind != "pool":
        parts.append("ceil")
    if a.get("filler"):
        parts.append(a["filler"])
    if layer.kind == "pool":
        parts.insert(0, a["mode"])
    return " ".join(parts)


def _squash(pair):
    return pair[:1] if pair[0] == pair[1] else pair


def group_split(layer) -> dict | None:
    """For grouped layers: channels in and out of each group (AlexNet conv2: 48+48 -> 128+128)."""
    g = layer.groups
    if g == 1 or layer.kind not in ("conv", "deconv", "local"):
        return None
    c, f = layer.in_shapes[0][0], layer.attrs["filters"]
    return {"groups": g, "in": [c // g] * g, "out": [f // g] * g}


def _split_text(split) -> str:
    if not split:
        return ""
    def join(xs):
        return "+".join(map(str, xs)) if len(xs) <= 4 else f"{len(xs)}x{xs[0]}"
    return f"groups {split['groups']}: in {join(split['in'])}, out {join(split['out'])}"


def _weight_text(layer) -> str:
    weight = layer.param_shapes().get(f"{layer.name}.weight")
    return fmt_shape(weight) if weight else ""


def _act_text(layer) -> str:
    act = layer.neuron
    return f"+{act}" if act else ""


def summary_dict(net) -> dict:
    rows = []
    for layer in net.layers:
        rows.append({
            "name": layer.name, "kind": layer.kind, "inputs": layer.inputs,
            "output": list(layer.out_shape), "geometry": _geometry(layer),
            "neuron": str(layer.neuron) if layer.neuron else None,
            "split": group_split(layer),
            "params": {k: list(v) for k, v in layer.param_shapes().items()},
            "param_count": layer.param_count, "neurons": layer.neurons, "macs": layer.macs,
        })
    return {
        "network": net.name, "convention": net.convention,
        "input": {"name": net.input_name, "shape": list(net.input_shape)},
        "layers": rows,
        "totals": {"params": sum(r["param_count"] for r in rows), "neurons": sum(r["neurons"] for r in rows),
                   "macs": sum(r["macs"] for r in rows)},
    }


def summary_table(net) -> str:
    info = summary_dict(net)
    header = ["layer", "kind", "from", "output", "window", "groups", "weight", "params", "neurons", "MACs"]
    rows = [[net.input_name, "input", "", fmt_shape(net.input_shape), "", "", "", "", "", ""]]
    for layer, r in zip(net.layers, info["layers"]):
        rows.append([layer.name, layer.kind + _act_text(layer), ", ".join(layer.inputs), fmt_shape(layer.out_shape),
                     r["geometry"], _split_text(r["split"]), _weight_text(layer),
                     f"{r['param_count']:,}" if r["param_count"] else "",
                     f"{r['neurons']:,}", f"{r['macs']:,}" if r["macs"] else ""])
    t = info["totals"]
    rows.append(["total", "", "", "", "", "", "", f"{t['params']:,}", f"{t['neurons']:,}", f"{t['macs']:,}"])
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    numeric = {7, 8, 9}

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    title = (f"network {net.name}  (convention {net.convention}, input {net.input_name} "
             f"{fmt_shape(net.input_shape)}, per image)")
    rule = "-" * len(line(header))
    body = [line(r) for r in rows[:-1]]
    return "\n".join([title, line(header), rule, *body, rule, line(rows[-1])])
