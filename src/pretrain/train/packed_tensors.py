"""Any picklable object holding tensors, sent between processes as one buffer.

``torch.multiprocessing`` moves each tensor of a queued object into its own shared-memory
block and hands the receiver one descriptor or name per block, each a round trip.
:func:`pack` instead copies every tensor into one flat byte tensor (one block) and pickles
the rest of the object with the tensors replaced by their place in it; :func:`unpack`
rebuilds the object around views of that buffer, without copying.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch

ALIGN_BYTES = 64
"""Each tensor starts at a multiple of this in the buffer (``Tensor.view(dtype)`` needs the
offset to be a multiple of the element size; 64 also keeps cache lines apart)."""


class _TensorsOut(pickle.Pickler):
    def __init__(self, file: io.BytesIO):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: list[torch.Tensor] = []

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            self.tensors.append(obj)
            return len(self.tensors) - 1
        return None


class _TensorsIn(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, views: list[torch.Tensor]):
        super().__init__(file)
        self.views = views

    def persistent_load(self, pid: Any) -> torch.Tensor:
        return self.views[pid]


def pack(obj: Any) -> tuple[bytes, torch.Tensor, list[tuple[int, torch.Size, torch.dtype]]]:
    """``(pickled structure, flat uint8 buffer, [(offset, shape, dtype)] per tensor)``.

    Tensors that share storage are copied once each (as separate tensors); CPU tensors only.
    """
    structure = io.BytesIO()
    pickler = _TensorsOut(structure)
    pickler.dump(obj)
    layout, offset = [], 0
    for t in pickler.tensors:
        layout.append((offset, t.shape, t.dtype))
        offset += -(-t.numel() * t.element_size() // ALIGN_BYTES) * ALIGN_BYTES
    flat = torch.empty(offset, dtype=torch.uint8)
    for (start, shape, dtype), t in zip(layout, pickler.tensors, strict=True):
        size = t.numel() * t.element_size()
        flat[start : start + size].view(dtype).view(shape).copy_(t)
    return structure.getvalue(), flat, layout


def unpack(
    structure: bytes, flat: torch.Tensor, layout: list[tuple[int, torch.Size, torch.dtype]]
) -> Any:
    """The object :func:`pack` packed, its tensors views of ``flat``."""
    views = []
    for start, shape, dtype in layout:
        size = shape.numel() * dtype.itemsize
        views.append(flat[start : start + size].view(dtype).view(shape))
    return _TensorsIn(io.BytesIO(structure), views).load()
