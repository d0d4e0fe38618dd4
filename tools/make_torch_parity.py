#!/usr/bin/env python3
"""Writes tests/fixtures/torch_parity.json: PyTorch's logits for the shipped models
(and the shipped ResNet-18's weights under every other `ours` gate mix and without
attention) on a fixed input, so that `tests/torch_parity.rs` can hold Candle's graph
to PyTorch's.

    bench/.venv/bin/python tools/make_torch_parity.py      # from the crate root

Needs torch and safetensors (bench/compare.py makes bench/.venv with them). The
PyTorch twins of our networks are bench/compare.py's `build_torch_model`, written
from torchvision's ResNet, EfficientNet-PyTorch's Lite0 and RecycleNet's module.
The input is computed, not stored: x[n, c, h, w] = 1.5·sin(0.05·(h·S + w) + 1.3·c + 0.7·n)
for an S×S image; the Rust test computes the same.
"""

import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from compare import build_torch_model, read_spec  # noqa: E402

R18 = "models/resnet18-ours-trashnet.safetensors"
EFF = "models/efficientnet_lite0-ours-trashnet.safetensors"
# (model file, attention, gate mix): the files as shipped, then their weights under
# the other mixes of RecycleNet's module and with no attention. The mixes use the
# EfficientNet: on this input the ResNet's spatial gate is shut (≈0), which would
# make product and spatial-only equal to the classifier's bias.
CASES = [(R18, "ours", "sum"), (EFF, "ours", "sum"), (EFF, "ours", "product"), (EFF, "ours", "max"),
         (EFF, "ours", "spatial-only"), (EFF, "none", "sum"), (R18, "none", "sum")]
BATCH = 2


def test_input(size):
    import torch
    values = [[[[1.5 * math.sin(0.05 * (h * size + w) + 1.3 * c + 0.7 * n) for w in range(size)]
                for h in range(size)] for c in range(3)] for n in range(BATCH)]
    return torch.tensor(values, dtype=torch.float32)


def logits(path, att, mix):
    import torch
    from safetensors.torch import load_file
    spec = dict(read_spec(os.path.join(ROOT, path)), att=att, att_mix=mix)
    model = build_torch_model(spec)
    state = model.state_dict()
    weights = {k: v.float() for k, v in load_file(os.path.join(ROOT, path)).items() if k in state}
    for k in state:
        if k.endswith("num_batches_tracked"):
            weights[k] = state[k]
    model.load_state_dict(weights, strict=True)
    with torch.inference_mode():
        return spec["image_size"], model.eval()(test_input(spec["image_size"])).tolist()


def main():
    import torch
    cases = []
    for path, att, mix in CASES:
        size, out = logits(path, att, mix)
        cases.append({"model": path, "att": att, "att_mix": mix, "image_size": size, "logits": out})
        print(f"{path} {att}/{mix}: {[round(v, 4) for v in out[0]]}")
    fixture = {"torch": torch.__version__, "batch": BATCH, "cases": cases}
    with open(os.path.join(ROOT, "tests", "fixtures", "torch_parity.json"), "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
