#!/usr/bin/env python3
"""Candle (`smartbin bench`) against PyTorch and ONNX Runtime, on the same weights.

    python3 bench/compare.py                                 # both shipped models
    python3 bench/compare.py --model models/X.safetensors --batch 1 16 --rounds 3

The first run makes `bench/.venv` and pip-installs torch, onnxruntime, onnx,
safetensors and numpy into it (torch from PyPI brings its CUDA libraries, ~4 GB;
only the CPU is used). It then, per model:

1. loads the model file's weights into the equivalent PyTorch module (ResNet-18/34
   or EfficientNet-Lite0, with or without RecycleNet's attention) and exports it
   to ONNX;
2. checks parity: `smartbin bench --dump` writes an input batch and Candle's
   logits, which PyTorch and ONNX Runtime must reproduce;
3. times every runtime in its own process (so peak RSS is its own), interleaved
   round by round, rotating the order: Candle f32, Candle q8_0 and q4k (quantized
   by `smartbin quantize` into a scratch folder), PyTorch, ONNX Runtime; and a
   training step (batch 16) in Candle and PyTorch;
4. prints a Markdown table of medians over rounds, with ratios to PyTorch and to
   ONNX Runtime, headed by the date and the machine.

Timings on shared machines are noisy: read the ratios, and compare runs made on
the same machine.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "bench", ".venv")
PACKAGES = ["torch", "onnxruntime", "onnx", "safetensors", "numpy"]
DEFAULT_MODELS = ["models/resnet18-ours-trashnet.safetensors", "models/efficientnet_lite0-ours-trashnet.safetensors"]


# --------------------------------------------------------------------------- venv

def in_venv():
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


def ensure_venv():
    """Re-runs this script inside bench/.venv, making it first if needed."""
    if in_venv():
        return
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        print(f"making {VENV} and installing {' '.join(PACKAGES)} (once; torch is large)", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([python, "-m", "pip", "install", "-q", *PACKAGES])
    os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])


# --------------------------------------------------------------------------- model files

def read_spec(path):
    """The smartbin.spec metadata of a model file (safetensors header, no tensors)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.get("__metadata__", {})
    if "smartbin.spec" not in meta:
        sys.exit(f"{path}: not a smartbin model (no smartbin.spec metadata)")
    if "smartbin.quantized" in meta:
        sys.exit(f"{path} is quantized: give its f32/f16 original (compare.py quantizes it itself)")
    return json.loads(meta["smartbin.spec"])


def build_torch_model(spec):
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Attention(nn.Module):
        """RecycleNet's module: x·σ(channel MLP) and x·σ(7×7 conv), combined by `mix`."""

        def __init__(self, c, mix):
            super().__init__()
            self.mix = mix
            if mix != "spatial-only":
                self.channel = nn.Module()
                hidden = max(c // 16, 1)
                self.channel.fc1, self.channel.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
            self.spatial = nn.Conv2d(c, 1, 7, padding=3, bias=True)

        def forward(self, x):
            gate = torch.sigmoid(self.spatial(x))
            spatial = x * gate
            if self.mix == "spatial-only":
                return spatial
            w = self.channel.fc2(F.relu(self.channel.fc1(x.mean((2, 3)))))
            channel = x * torch.sigmoid(w)[:, :, None, None]
            if self.mix == "sum":
                return channel + spatial
            if self.mix == "product":
                return channel * gate
            return torch.maximum(channel, spatial)

    class Basic(nn.Module):
        def __init__(self, c_in, c, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
            self.downsample = None
            if stride != 1 or c_in != c:
                self.downsample = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self, blocks, classes, att, mix):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
            c_in = 64
            for i, (n, c) in enumerate(zip(blocks, [64, 128, 256, 512])):
                layer = []
                for b in range(n):
                    layer.append(Basic(c_in, c, (1 if i == 0 else 2) if b == 0 else 1))
                    c_in = c
                setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            self.att = Attention(c_in, mix) if att == "ours" else None
            self.fc = nn.Linear(c_in, classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            if self.att is not None:
                x = self.att(x)
            return self.fc(x.mean((2, 3)))

    def pad_same(x, k, stride):
        """TensorFlow's "same" padding: the odd pixel goes bottom/right."""
        def amount(size):
            out = -(-size // stride)
            total = max((out - 1) * stride + k - size, 0)
            return total // 2, total - total // 2
        (top, bottom), (left, right) = amount(x.shape[2]), amount(x.shape[3])
        return F.pad(x, (left, right, top, bottom)) if top + bottom + left + right else x

    class MbConv(nn.Module):
        def __init__(self, c_in, c_out, expansion, k, stride):
            super().__init__()
            hidden = c_in * expansion
            self.k, self.stride, self.residual = k, stride, stride == 1 and c_in == c_out
            if expansion != 1:
                self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
                self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
            self._depthwise_conv = nn.Conv2d(hidden, hidden, k, stride, groups=hidden, bias=False)
            self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
            self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
            self._bn2 = nn.BatchNorm2d(c_out, eps=1e-3)

        def forward(self, x):
            y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
            y = F.relu6(self._bn1(self._depthwise_conv(pad_same(y, self.k, self.stride))))
            y = self._bn2(self._project_conv(y))
            return y + x if self.residual else y

    class EfficientNetLite0(nn.Module):
        STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                  (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]

        def __init__(self, classes, att, mix):
            super().__init__()
            self._conv_stem, self._bn0 = nn.Conv2d(3, 32, 3, 2, bias=False), nn.BatchNorm2d(32, eps=1e-3)
            blocks = []
            for repeats, k, stride, expansion, c_in, c_out in self.STAGES:
                for r in range(repeats):
                    blocks.append(MbConv(c_in if r == 0 else c_out, c_out, expansion, k, stride if r == 0 else 1))
            self._blocks = nn.ModuleList(blocks)
            self._conv_head, self._bn1 = nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=1e-3)
            self.att = Attention(1280, mix) if att == "ours" else None
            self._fc = nn.Linear(1280, classes)

        def forward(self, x):
            x = F.relu6(self._bn0(self._conv_stem(pad_same(x, 3, 2))))
            for block in self._blocks:
                x = block(x)
            x = F.relu6(self._bn1(self._conv_head(x)))
            if self.att is not None:
                x = self.att(x)
            return self._fc(x.mean((2, 3)))

    arch, att, mix, classes = spec["arch"], spec["att"], spec.get("att_mix", "sum"), len(spec["classes"])
    if att not in ("none", "ours"):
        sys.exit(f"compare.py builds `none` and `ours` attention only, not `{att}`")
    if arch in ("resnet18", "resnet34"):
        return ResNet([2, 2, 2, 2] if arch == "resnet18" else [3, 4, 6, 3], classes, att, mix)
    if arch == "efficientnet_lite0":
        return EfficientNetLite0(classes, att, mix)
    sys.exit(f"compare.py has no PyTorch twin for {arch}")


def load_torch_model(path):
    import torch
    from safetensors.torch import load_file
    model = build_torch_model(read_spec(path))
    weights = {k: v.float() for k, v in load_file(path).items()}
    state = model.state_dict()
    # torchvision keeps num_batches_tracked; smartbin files do not (it is unused in eval).
    for k in state:
        if k.endswith("num_batches_tracked"):
            weights[k] = state[k]
    model.load_state_dict(weights, strict=True)
    return model.eval()


# --------------------------------------------------------------------------- workers

def peak_rss_mib():
    """VmHWM, as `smartbin bench` reports it. (ru_maxrss would count the driver's
    memory too: Linux keeps it across the fork and exec that started this worker.)"""
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024


def timed(run, iters):
    for _ in range(3):
        run()
    ms = []
    for _ in range(iters):
        t = time.perf_counter()
        run()
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    return {"median_ms": statistics.median(ms), "p90_ms": ms[round((len(ms) - 1) * 0.9)]}


def worker(args):
    """One runtime, one configuration, in this process; prints a JSON line."""
    import numpy as np
    size = args.image_size or read_spec(args.model)["image_size"]
    x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size), dtype=np.float32)
    if args.worker == "ort":
        # Without torch in this process, so the peak RSS is ONNX Runtime's own.
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(args.onnx, opts, providers=["CPUExecutionProvider"])
        result = timed(lambda: session.run(None, {"input": x}), args.iters)
        result["peak_rss_mib"] = peak_rss_mib()
        return print(json.dumps(result))
    import torch
    torch.set_num_threads(args.threads)
    # Channels that rarely fire produce denormals, which make PyTorch's x86
    # kernels many times slower; flushed, it is timed at its best.
    torch.set_flush_denormal(True)
    model = load_torch_model(args.model)
    x = torch.from_numpy(x)
    if args.train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
        classes = len(read_spec(args.model)["classes"])
        y = torch.arange(args.batch) % classes

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        result = timed(step, args.iters)
    else:
        with torch.inference_mode():
            result = timed(lambda: model(x), args.iters)
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


# --------------------------------------------------------------------------- driver

def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def candle(args, model, batch, train=False, iters=None, extra=()):
    cmd = [args.smartbin, "bench", "--model", model, "--batch", str(batch), "--threads", str(args.threads),
           "--iters", str(iters or args.iters), "--json", *extra]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    if train:
        cmd.append("--train")
    r = run_json(cmd)
    return {"median_ms": r["forward"]["median_ms"], "p90_ms": r["forward"]["p90_ms"], "peak_rss_mib": r["peak_rss_mib"]}


def python_worker(args, runtime, model, batch, onnx_path=None, train=False, iters=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", runtime, "--model", model, "--batch", str(batch),
           "--threads", str(args.threads), "--iters", str(iters or args.iters)]
    if onnx_path:
        cmd += ["--onnx", onnx_path]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    if train:
        cmd.append("--train")
    return run_json(cmd)


def parity(args, model, scratch):
    """Max |logit difference| of PyTorch and ONNX Runtime against Candle's dump."""
    import numpy as np
    import torch
    import onnxruntime as ort
    from safetensors.numpy import load_file
    dump = os.path.join(scratch, "io.safetensors")
    extra = ["--dump", dump] + (["--image-size", str(args.image_size)] if args.image_size else [])
    subprocess.run([args.smartbin, "bench", "--model", model, "--batch", "2", "--iters", "1", "--json", *extra],
                   check=True, capture_output=True, cwd=ROOT)
    io = load_file(dump)
    net = load_torch_model(model)
    with torch.inference_mode():
        theirs = net(torch.from_numpy(io["input"])).numpy()
    onnx_path = os.path.join(scratch, os.path.basename(model) + ".onnx")
    export(net, torch.from_numpy(io["input"]), onnx_path)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    ort_out = session.run(None, {"input": io["input"]})[0]
    return float(np.abs(theirs - io["logits"]).max()), float(np.abs(ort_out - io["logits"]).max()), onnx_path


def export(net, example, path):
    import torch
    kwargs = dict(input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}}, opset_version=17)
    try:
        torch.onnx.export(net, example, path, dynamo=False, **kwargs)
    except TypeError:  # torch before 2.5 has no `dynamo` argument
        torch.onnx.export(net, example, path, **kwargs)


def machine():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--image-size", type=int, help="input side (default: each model's own)")
    p.add_argument("--no-train", action="store_true", help="skip the training-step rows")
    p.add_argument("--smartbin", default=os.path.join(ROOT, "target", "release", "smartbin"))
    p.add_argument("--worker", choices=["torch", "ort"], help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    p.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    ensure_venv()
    if args.worker:
        args.model, args.batch = args.model[0], args.batch[0]
        return worker(args)
    if not os.path.exists(args.smartbin):
        subprocess.check_call(["cargo", "build", "--release"], cwd=ROOT)
    import torch
    import onnxruntime
    print(f"# {datetime.date.today()}, {machine()}, {args.threads} threads; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; medians of {args.rounds} interleaved rounds of {args.iters} runs\n")
    with tempfile.TemporaryDirectory() as scratch:
        for model in args.model:
            compare_model(args, model, scratch)


def compare_model(args, model, scratch):
    spec = read_spec(model)
    size = args.image_size or spec["image_size"]
    torch_diff, ort_diff, onnx_path = parity(args, model, scratch)
    print(f"## {model} ({spec['arch']} + {spec['att']}, {size}×{size})\n")
    print(f"parity against Candle's logits (max |Δ|): PyTorch {torch_diff:.2e}, ONNX Runtime {ort_diff:.2e}\n")
    quantized = {}
    for dtype in ["q8_0", "q4k"]:
        out = os.path.join(scratch, f"{os.path.basename(model)}.{dtype}.safetensors")
        subprocess.run([args.smartbin, "quantize", "--model", model, "--out", out, "--dtype", dtype],
                       check=True, capture_output=True, cwd=ROOT)
        quantized[dtype] = out
    runners = {
        "Candle f32": lambda b: candle(args, model, b),
        "Candle q8_0": lambda b: candle(args, quantized["q8_0"], b),
        "Candle q4k": lambda b: candle(args, quantized["q4k"], b),
        "PyTorch f32": lambda b: python_worker(args, "torch", model, b),
        "ONNX Runtime f32": lambda b: python_worker(args, "ort", model, b, onnx_path),
    }
    rows = []
    for batch in args.batch:
        results = {name: [] for name in runners}
        for r in range(args.rounds):
            names = list(runners)
            names = names[r % len(names):] + names[:r % len(names)]
            for name in names:
                results[name].append(runners[name](batch))
        rows.append((f"batch {batch}", summarise(results)))
    if not args.no_train:
        train = {"Candle f32": [], "PyTorch f32": []}
        for r in range(args.rounds):
            order = ["Candle f32", "PyTorch f32"][::(-1) ** r]
            for name in order:
                if name == "Candle f32":
                    train[name].append(candle(args, model, 16, train=True, iters=3))
                else:
                    train[name].append(python_worker(args, "torch", model, 16, train=True, iters=3))
        rows.append(("train step, batch 16", summarise(train)))
    print_table(rows)


def summarise(results):
    return {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()}


def print_table(rows):
    names = list(dict.fromkeys(n for _, row in rows for n in row))
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for label, row in rows:
        cells = []
        for n in names:
            if n not in row:
                cells.append("—")
                continue
            ms = row[n]["median_ms"]
            ratio = []
            for ref in ("PyTorch f32", "ONNX Runtime f32"):
                if ref in row and ref != n:
                    ratio.append(f"{ms / row[ref]['median_ms']:.2f}× {ref.split()[0]}")
            cells.append(f"{ms:.1f} ms ({', '.join(ratio)}; {row[n]['peak_rss_mib']:.0f} MiB)" if ratio
                         else f"{ms:.1f} ms ({row[n]['peak_rss_mib']:.0f} MiB)")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()


if __name__ == "__main__":
    main()
