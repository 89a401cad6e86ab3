"""Rewrites a safetensors file (f32 tensors) as a PyTorch `torch.save` zip archive, without
torch: the pickle names torch's own rebuild functions, so torch and burn-store read it as a
state dict. With --nest, the dict is stored as open_clip's training checkpoints are:
{"epoch": 1, "state_dict": {"module.<key>": tensor}}.

usage: safetensors_to_torch.py IN.safetensors OUT.pt [--nest]
"""
import collections
import io
import json
import pickle
import struct
import sys
import types
import zipfile

# Stand-ins registered under torch's module names so that pickle writes torch's globals.
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, torch_utils


class FloatStorage:
    pass


def _rebuild_tensor_v2(*args):
    raise NotImplementedError


FloatStorage.__module__ = "torch"
_rebuild_tensor_v2.__module__ = "torch._utils"
torch.FloatStorage = FloatStorage
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, tuple(shape)

    def __reduce__(self):
        stride, step = [], 1
        for dim in reversed(self.shape):
            stride.insert(0, step)
            step *= dim
        return (_rebuild_tensor_v2, (self.storage, 0, self.shape, tuple(stride), False, collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


def main():
    source, target = sys.argv[1], sys.argv[2]
    nest = "--nest" in sys.argv[3:]
    data = open(source, "rb").read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = data[8 + header_len :]
    state, blobs = collections.OrderedDict(), []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: only f32 is supported"
        start, end = info["data_offsets"]
        key = str(len(blobs))
        blobs.append((key, body[start:end]))
        state[("module." if nest else "") + name] = Tensor(Storage(key, (end - start) // 4), info["shape"])
    payload = {"epoch": 1, "state_dict": state} if nest else state
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", _dump(payload))
        archive.writestr("archive/byteorder", "little")
        for key, blob in blobs:
            archive.writestr(f"archive/data/{key}", blob)
        archive.writestr("archive/version", "3\n")


def _dump(payload):
    buffer = io.BytesIO()
    TorchPickler(buffer, protocol=2).dump(payload)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
