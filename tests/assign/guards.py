"""A guard for tests: no op may read a tensor's values on the host inside it."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class NoHostReads(TorchDispatchMode):
    """Fails on every op that makes the host wait for a tensor's values (a device sync on GPU)."""

    READS = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique", "aten._unique")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func)
        if name.startswith(self.READS) or (
            name.startswith("aten.index.")
            and any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1])
        ):
            raise AssertionError(f"host read: {name}")
        return func(*args, **(kwargs or {}))
