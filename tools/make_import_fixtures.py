#!/usr/bin/env python3
"""Writes the tiny PyTorch checkpoints in tests/fixtures/import/ without PyTorch.

    python3 tools/make_import_fixtures.py        # from the crate root

The tests of `src/model/import.rs` read these files and assert the values in
EXPECTED below (kept in sync by hand: change one, change the other).

Only the standard library is used. PyTorch's pickled objects are faked exactly as
`torch.save` writes them with pickle protocol 2:

* a tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
  requires_grad, backward_hooks)` (REDUCE), backward_hooks an empty
  `collections.OrderedDict`;
* a storage is a persistent id `('storage', torch.FloatStorage, key, 'cpu', numel)`
  (the legacy format adds a sixth item, the view metadata: None or
  `(view_key, offset, view_numel)`);
* a state dict is a `collections.OrderedDict` carrying a `_metadata` attribute
  (pickled as BUILD with `{'_metadata': ...}`), which is not a tensor.

Files:

* `legacy.pth`         pre-1.6 format: magic, protocol (1001), sys-info pickles, the
                       state dict, the storage keys, then per key an 8-byte count
                       and the raw little-endian elements. Flat state dict
                       (like torchvision's `resnet18-5c106cde.pth`).
* `legacy_nested.pth`  the same tensors in a RecycleNet-style checkpoint:
                       `{'epoch', 'arch', 'state_dict': {'module.<name>': ...},
                       'best_acc1', 'optimizer'}` (DataParallel prefixes).
* `zip.pth`            torch >= 1.6 zip format (`archive/data.pkl`,
                       `archive/data/<key>`, `archive/version`, `archive/byteorder`),
                       flat state dict.
* `zip_nested.pth`     zip format, `{'model': {'module.<name>': ...}, 'epoch': 2}`.
* `zip_protocol4_parameters.pth`  zip format, pickle protocol 4 (FRAME, MEMOIZE,
                       STACK_GLOBAL, SHORT_BINUNICODE), every tensor wrapped as an
                       nn.Parameter (`torch._utils._rebuild_parameter` or
                       `torch._tensor._rebuild_from_type_v2(..., Parameter, ...)`).
* `forbidden_global.pth`      legacy, with `os.system` pickled inside the state dict.
* `forbidden_global_zip.pth`  zip, with `os.system` pickled inside the state dict.
* `unknown_storage.pth`       legacy, a tensor on a `torch.ComplexFloatStorage`.

Tensors (every file except the last three holds all of them):

* `conv.weight`   f32 (2, 3), contiguous, its own storage.
* `fc.weight`     f32 (4, 3) = transpose of a (3, 4) row-major storage: stride (1, 4).
* `fc.bias`       f32 (4,), offset 2 into an 8-element storage shared with
                  `bn.weight` (offset 0, size (2,)).
* `bn.weight`     see above.
* `every_other`   f32 (3,), offset 1, stride (2,) into a 6-element storage.
* `half.weight`   f16 (4,) (HalfStorage), values exactly representable in f16.
* `double.weight` f64 (2,) (DoubleStorage).
* `int.weight`    i32 (2,) (IntStorage): comes back as i64.
* `bn.num_batches_tracked`  i64 scalar () (LongStorage).
* `scalar`        f32 scalar ().
* `legacy_view`   legacy files only: a tensor on a *storage view* (view
                  metadata ('view0', 4, 4) of the 8-element storage of fc.bias),
                  offset 1, size (2,): elements 5 and 6 of that storage.
"""

import collections
import io
import os
import pickle
import struct
import zipfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "import")

# name -> (shape, values in row-major order). Floats are f32-exact.
EXPECTED = {
    "conv.weight": ((2, 3), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    "fc.weight": ((4, 3), [0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]),
    "fc.bias": ((4,), [-2.0, -3.0, -4.0, -5.0]),
    "bn.weight": ((2,), [0.0, -1.0]),
    "every_other": ((3,), [0.5, 1.5, 2.5]),
    "half.weight": ((4,), [1.5, -0.25, 1024.0, 0.0999755859375]),
    "double.weight": ((2,), [0.125, -3.0]),
    "int.weight": ((2,), [7, -9]),
    "bn.num_batches_tracked": ((), [42]),
    "scalar": ((), [1.5]),
}
LEGACY_ONLY = {"legacy_view": ((2,), [-5.0, -6.0])}


class G:
    """A pickled global `module.name` (written as a GLOBAL opcode, never imported)."""
    cache = {}

    def __new__(cls, module, name):
        key = (module, name)
        if key not in cls.cache:
            obj = super().__new__(cls)
            obj.module, obj.name = module, name
            cls.cache[key] = obj
        return cls.cache[key]

    def __call__(self, *args):  # pickle insists that a reduce function be callable
        raise RuntimeError("fake global %s.%s is never called" % (self.module, self.name))


class Call:
    """Pickles as `func(*args)` (REDUCE), like an object's __reduce__."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class Storage:
    def __init__(self, kind, fmt, values, key):
        self.kind, self.fmt, self.values, self.key = kind, fmt, values, key

    def raw(self):
        flat = [x for v in self.values for x in (v if isinstance(v, tuple) else (v,))]
        return struct.pack("<" + self.fmt * len(self.values), *flat)


class StorageView:
    """Legacy-only: a view (offset, numel) into another storage."""

    def __init__(self, root, view_key, offset, numel):
        self.root, self.view_key, self.offset, self.numel = root, view_key, offset, numel


def tensor(storage, offset, size, stride):
    return Call(G("torch._utils", "_rebuild_tensor_v2"),
                (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict()))


class Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes G objects as GLOBAL opcodes and storages as
    persistent ids, as torch.save does."""
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, f, legacy, protocol=2):
        super().__init__(f, protocol=protocol)
        self.legacy = legacy
        self.storages = collections.OrderedDict()  # key -> Storage, first-seen order

    def save_g(self, obj):
        if self.proto >= 4:  # what Python itself writes from protocol 4 on
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
        self.memoize(obj)
    dispatch[G] = save_g

    def persistent_id(self, obj):
        if isinstance(obj, StorageView):
            assert self.legacy
            self.storages.setdefault(obj.root.key, obj.root)
            return ("storage", G("torch", obj.root.kind), obj.root.key, "cpu", len(obj.root.values),
                    (obj.view_key, obj.offset, obj.numel))
        if isinstance(obj, Storage):
            self.storages.setdefault(obj.key, obj)
            pid = ("storage", G("torch", obj.kind), obj.key, "cpu", len(obj.values))
            return pid + (None,) if self.legacy else pid
        return None


def as_parameter(t, i):
    """Wraps a tensor the two ways torch pickles an nn.Parameter."""
    if i % 2 == 0:
        return Call(G("torch._utils", "_rebuild_parameter"), (t, True, collections.OrderedDict()))
    return Call(G("torch._tensor", "_rebuild_from_type_v2"),
                (t.func, G("torch.nn.parameter", "Parameter"), t.args, {}))


def state_dict(legacy, prefix="", evil=False, bad_storage=False, parameters=False):
    k = (lambda i: "9400%d" % i) if legacy else str  # torch: str(id) vs. 0, 1, 2, ...
    conv = Storage("FloatStorage", "f", [1, 2, 3, 4, 5, 6], k(0))
    mat = Storage("FloatStorage", "f", list(range(12)), k(1))          # (3, 4) row-major
    shared = Storage("FloatStorage", "f", [0, -1, -2, -3, -4, -5, -6, -7], k(2))
    strided = Storage("FloatStorage", "f", [0, 0.5, 1, 1.5, 2, 2.5], k(3))
    half = Storage("HalfStorage", "e", [1.5, -0.25, 1024.0, 0.0999755859375], k(4))
    double = Storage("DoubleStorage", "d", [0.125, -3.0], k(5))
    ints = Storage("IntStorage", "i", [7, -9], k(6))
    count = Storage("LongStorage", "q", [42], k(7))
    scalar = Storage("FloatStorage", "f", [1.5], k(8))
    sd = collections.OrderedDict()
    sd["conv.weight"] = tensor(conv, 0, (2, 3), (3, 1))
    sd["fc.weight"] = tensor(mat, 0, (4, 3), (1, 4))
    sd["fc.bias"] = tensor(shared, 2, (4,), (1,))
    sd["bn.weight"] = tensor(shared, 0, (2,), (1,))
    sd["every_other"] = tensor(strided, 1, (3,), (2,))
    sd["half.weight"] = tensor(half, 0, (4,), (1,))
    sd["double.weight"] = tensor(double, 0, (2,), (1,))
    sd["int.weight"] = tensor(ints, 0, (2,), (1,))
    sd["bn.num_batches_tracked"] = tensor(count, 0, (), ())
    sd["scalar"] = tensor(scalar, 0, (), ())
    if legacy:
        sd["legacy_view"] = tensor(StorageView(shared, "view0", 4, 4), 1, (2,), (1,))
    if evil:
        sd["evil"] = Call(G("os", "system"), ("echo pwned > /tmp/smartbin-pwned",))
    if bad_storage:
        sd["complex"] = tensor(Storage("ComplexFloatStorage", "ff", [(1.0, 2.0)], k(9)), 0, (1,), (1,))
    if parameters:
        sd = collections.OrderedDict((n, as_parameter(t, i)) for i, (n, t) in enumerate(sd.items()))
    sd = collections.OrderedDict((prefix + name, t) for name, t in sd.items())
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    return sd


def dumps(obj, legacy, protocol=2):
    buf = io.BytesIO()
    p = Pickler(buf, legacy, protocol)
    p.dump(obj)
    return buf.getvalue(), p.storages


def write_legacy(path, obj):
    out = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001,
                   {"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, out, protocol=2)
    data, storages = dumps(obj, legacy=True)
    out.write(data)
    pickle.dump(list(storages), out, protocol=2)
    for storage in storages.values():
        out.write(struct.pack("<q", len(storage.values)))
        out.write(storage.raw())
    with open(path, "wb") as f:
        f.write(out.getvalue())


def write_zip(path, obj, protocol=2):
    data, storages = dumps(obj, legacy=False, protocol=protocol)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        def put(name, content):  # fixed timestamps: rerunning gives identical files
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
        put("archive/data.pkl", data)
        put("archive/byteorder", "little")
        for key, storage in storages.items():
            put("archive/data/" + key, storage.raw())
        put("archive/version", "3\n")
        put("archive/.data/serialization_id", "0123456789")


class _Reader(pickle.Unpickler):
    """Self-check: reads a fixture back without importing anything."""
    ELEM = {"FloatStorage": "f", "HalfStorage": "e", "DoubleStorage": "d", "IntStorage": "i",
            "LongStorage": "q", "ComplexFloatStorage": "ff"}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: (storage, offset, size, stride)
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *rest: data
        if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
            return lambda func, new_type, args, state: func(*args)
        if (module, name) == ("torch.nn.parameter", "Parameter"):
            return "Parameter"
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError("forbidden global %s.%s" % (module, name))

    def persistent_load(self, pid):
        view = pid[5] if len(pid) > 5 else None
        return (pid[1], pid[2], view[1] if view else 0)


def read_back(path):
    with open(path, "rb") as f:
        f = io.BytesIO(f.read())
        if zipfile.is_zipfile(f):
            z = zipfile.ZipFile(f)
            obj = _Reader(io.BytesIO(z.read("archive/data.pkl"))).load()
            raw = lambda key: z.read("archive/data/" + key)
        else:
            f.seek(0)
            for _ in range(3):
                pickle.load(f)
            obj = _Reader(f).load()
            data = {}
            for key in pickle.load(f):
                (n,) = struct.unpack("<q", f.read(8))
                kind = next(t[0] for t in _refs(obj) if t[1] == key)
                data[key] = f.read(n * struct.calcsize(_Reader.ELEM[kind]))
            raw = data.__getitem__
    sd = obj.get("state_dict", obj.get("model", obj))
    out = {}
    for name, (storage, offset, size, stride) in sd.items():
        kind, key, view_offset = storage
        fmt = _Reader.ELEM[kind]
        buf, values = raw(key), []
        def walk(dim, base):
            if dim == len(size):
                values.append(struct.unpack_from("<" + fmt, buf, base * struct.calcsize(fmt))[0])
                return
            for i in range(size[dim]):
                walk(dim + 1, base + i * stride[dim])
        walk(0, view_offset + offset)
        out[name[len("module."):] if name.startswith("module.") else name] = (tuple(size), values)
    return out


def _refs(obj):
    sd = obj.get("state_dict", obj.get("model", obj))
    return [t[0][:2] for t in sd.values()]


def main():
    os.makedirs(OUT, exist_ok=True)
    join = lambda name: os.path.join(OUT, name)
    write_legacy(join("legacy.pth"), state_dict(True))
    write_legacy(join("legacy_nested.pth"), {
        "epoch": 7, "arch": "resnet18", "state_dict": state_dict(True, prefix="module."),
        "best_acc1": 91.5,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
    })
    write_zip(join("zip.pth"), state_dict(False))
    write_zip(join("zip_nested.pth"), {"model": state_dict(False, prefix="module."), "epoch": 2})
    write_zip(join("zip_protocol4_parameters.pth"), state_dict(False, parameters=True), protocol=4)
    write_legacy(join("forbidden_global.pth"), state_dict(True, evil=True))
    write_zip(join("forbidden_global_zip.pth"), state_dict(False, evil=True))
    write_legacy(join("unknown_storage.pth"), state_dict(True, bad_storage=True))
    for name in ("legacy.pth", "legacy_nested.pth", "zip.pth", "zip_nested.pth", "zip_protocol4_parameters.pth"):
        want = dict(EXPECTED, **(LEGACY_ONLY if name.startswith("legacy") else {}))
        got = read_back(join(name))
        assert got == {k: (tuple(s), list(v)) for k, (s, v) in want.items()}, (name, got)
    total = sum(os.path.getsize(join(n)) for n in os.listdir(OUT))
    print("wrote %d files, %d bytes, into %s" % (len(os.listdir(OUT)), total, os.path.normpath(OUT)))


if __name__ == "__main__":
    main()
