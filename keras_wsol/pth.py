"""Read a PyTorch ``.pth`` state dict into numpy arrays, without torch and without running the pickle.

A ``.pth`` file is a pickle, and unpickling runs whatever callables the file
names: an untrusted file can execute arbitrary code. This reader allows only
the handful of globals a state dict needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the typed storage classes) and maps
each to a harmless stand-in; any other global (``os.system``,
``builtins.eval``, ...) is refused with :class:`UnsafePickleError` before
anything is called.

Only the legacy (non-zip) serialization is read: a magic-number pickle, a
protocol-version pickle, a system-info pickle, the state-dict pickle whose
storages are persistent ids, a pickle listing the storage keys, then each
storage's raw bytes preceded by its element count (int64, little endian).
This is the layout of ``torch.save(..., _use_new_zipfile_serialization=False)``
and of every file written before PyTorch 1.6; a zip-format file is refused
with a message that says so.

Example:
    >>> import io, os, pickle
    >>> class Exploit:
    ...     def __reduce__(self):
    ...         return (os.system, ("echo pwned",))
    >>> try:
    ...     _RestrictedUnpickler(io.BytesIO(pickle.dumps(Exploit())), "evil.pth", {}).load()
    ... except UnsafePickleError as error:
    ...     print(str(error)[:41])
    evil.pth: refuses the global posix.system
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

# torch.serialization's MAGIC_NUMBER and PROTOCOL_VERSION for the legacy format.
_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global this reader does not allow; nothing it names was called."""


class _Storage:
    """A storage's dtype and element count; its bytes are read after the state-dict pickle."""

    def __init__(self, dtype: type, numel: int):
        self.dtype = np.dtype(dtype)
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """What ``_rebuild_tensor_v2`` would build: a strided view of a storage, materialized later."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        itemsize = self.storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset :], shape=self.size, strides=tuple(s * itemsize for s in self.stride)
        )
        return np.ascontiguousarray(view)  # a copy, independent of the file buffer


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _TensorRef:
    # requires_grad and backward hooks do not matter for weights.
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a tensor state dict, each to a stand-in; refuses the rest."""

    def __init__(self, file, path: str, storages: dict):
        super().__init__(file)
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise UnsafePickleError(
            f"{self._path}: refuses the global {module}.{name}: a weights file needs only OrderedDict, "
            "_rebuild_tensor_v2 and storage types, so this file is not a plain state dict (loading it "
            "with torch.load could run code)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and pid[1] in _STORAGE_DTYPES):
            raise UnsafePickleError(f"{self._path}: unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        if key not in self._storages:
            self._storages[key] = _Storage(_STORAGE_DTYPES[storage_type], int(numel))
        return self._storages[key]


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format ``.pth`` state dict, by name, as numpy arrays (in file order).

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the file names any global beyond a state dict's.
        ValueError: not a legacy ``.pth`` state dict, or truncated; the message names the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        raise ValueError(f"{path}: a zip-format torch file; this reader reads the legacy format only")
    with open(path, "rb") as f:
        raw = f.read()
    stream = io.BytesIO(raw)
    storages: dict[str, _Storage] = {}
    try:
        header = [_RestrictedUnpickler(stream, path, storages).load() for _ in range(3)]
        if header[0] != _MAGIC_NUMBER or header[1] != _PROTOCOL_VERSION:
            raise ValueError(f"{path}: not a legacy torch file (magic {header[0]!r:.40}, protocol {header[1]!r:.20})")
        if not header[2].get("little_endian", False):
            raise ValueError(f"{path}: written on a big-endian machine; not supported")
        state = _RestrictedUnpickler(stream, path, storages).load()
        keys = _RestrictedUnpickler(stream, path, storages).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as error:
        raise ValueError(f"{path}: not a readable .pth state dict ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or not all(isinstance(t, _TensorRef) for t in state.values()):
        raise ValueError(f"{path}: the pickle holds no flat mapping of names to tensors")
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise ValueError(f"{path}: storage {key!r} is listed but no tensor uses it")
        head = stream.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", head)
        nbytes = numel * storage.dtype.itemsize
        body = stream.read(nbytes)
        if numel != storage.numel or len(body) != nbytes:
            raise ValueError(f"{path}: storage {key!r} is truncated or has the wrong size")
        storage.data = np.frombuffer(body, storage.dtype)
    return {name: tensor.array() for name, tensor in state.items()}
