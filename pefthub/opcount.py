"""Count the aten operations and host synchronisations of a piece of PyTorch code.

On a GPU, the training step of a small model is launch-bound: its time is close to
(number of dispatched aten ops) × (per-op overhead, ≈ 20 µs measured on an H200 with
MiniLM-L6), whatever the batch size. The op count does not depend on the device, so it
is measured on the CPU and used as a proxy of GPU step time (docs/results.md, "Training-step speed").

A *host sync* is an op whose result the host must wait for: a tensor read back as a Python
number (``.item()``, ``bool(t)``, ``.tolist()``: ``aten._local_scalar_dense``) or an op whose
output shape depends on the data (``nonzero``, ``masked_select``, ``unique`` ...). On a GPU
each one drains the launch queue, so the training step's path should have none.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from torch.utils._python_dispatch import TorchDispatchMode

#: aten ops (by overload packet) that make the host wait for the device.
HOST_SYNC_OPS = frozenset({
    "aten._local_scalar_dense",  # .item(), bool(t), int(t), .tolist()
    "aten.nonzero",
    "aten.nonzero_static",
    "aten.masked_select",
    "aten.unique",
    "aten._unique",
    "aten._unique2",
    "aten.unique_consecutive",
    "aten.unique_dim",
    "aten.repeat_interleave",  # with a tensor of repeats: output size from the data
})


@dataclass
class OpCount:
    """What an :class:`OpCounter` saw."""

    ops: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def host_syncs(self) -> int:
        return sum(n for name, n in self.ops.items() if name in HOST_SYNC_OPS)

    def sync_ops(self) -> dict[str, int]:
        return {name: n for name, n in self.ops.items() if name in HOST_SYNC_OPS}

    def most_common(self, n: int = 15) -> list[tuple[str, int]]:
        return self.ops.most_common(n)


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as counter: ...`` counts every aten op dispatched inside, the
    backward pass included (the CPU autograd engine runs it on the calling thread).

    ``counter.result`` accumulates over every ``with`` block the same counter enters.
    """

    def __init__(self) -> None:
        super().__init__()
        self.result = OpCount()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.result.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))
