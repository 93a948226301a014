"""Find host-device synchronisations in the training and validation steps.

A GPU step that converts a device tensor to a Python value (``.item()``, ``bool(t)``, ``int(t)``),
copies it to host memory (``.tolist()``, ``.numpy()``) or runs an operation whose output size
depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``) makes the
CPU wait for every queued kernel: the GPU then idles while Python prepares the next step.

:class:`SyncCounter` finds them **on a CPU** too, where nothing actually waits: it patches the
Python conversions of ``torch.Tensor`` and watches, through a ``TorchDispatchMode``, the aten
operations that would wait on a GPU. :func:`watch_steps` wraps a LightningModule's
``training_step``/``validation_step`` so only what runs inside them is counted (Lightning's own
loop between steps is not). On CUDA, ``sync_debug=True`` also runs the steps under
``torch.cuda.set_sync_debug_mode("error")``, which raises at the first real synchronisation.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Python-level conversions of a tensor to host values.
_CONVERSIONS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")
# aten operations that wait for the device: a scalar read, or an output sized by the data.
_SYNC_OPS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::is_nonzero",
    "aten::equal",
}
_INDEX_OPS = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


def _has_bool_index(args: tuple[Any, ...]) -> bool:
    return any(
        isinstance(a, list | tuple)
        and any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in a)
        for a in args
    )


class _OpWatcher(TorchDispatchMode):
    def __init__(self, counts: Counter[str]) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func._schema.name
        if name in _SYNC_OPS:
            self.counts[name] += 1
        elif name in _INDEX_OPS and _has_bool_index(args):
            self.counts[f"{name}[bool mask]"] += 1
        elif name == "aten::repeat_interleave" and (kwargs or {}).get("output_size") is None:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


class SyncCounter:
    """Context manager counting would-be synchronisations by kind (``counts``, ``total``)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._saved: dict[str, Any] = {}
        self._mode: _OpWatcher | None = None
        self._depth = 0
        self.calls = 0  # steps run inside the counter (watch_steps)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _patch(self) -> None:
        for name in _CONVERSIONS:
            orig = getattr(torch.Tensor, name)
            self._saved[name] = torch.Tensor.__dict__.get(name)

            def counted(t: torch.Tensor, *a: Any, _name: str = name, _orig: Any = orig) -> Any:
                self.counts[f"Tensor.{_name}"] += 1
                return _orig(t, *a)

            setattr(torch.Tensor, name, counted)

    def _unpatch(self) -> None:
        for name, orig in self._saved.items():
            if orig is None:  # inherited from torch._C.TensorBase
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, orig)
        self._saved.clear()

    def __enter__(self) -> SyncCounter:
        self._depth += 1
        if self._depth == 1:
            self._patch()
            self._mode = _OpWatcher(self.counts)
            self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            assert self._mode is not None
            self._mode.__exit__(*exc)
            self._mode = None
            self._unpatch()


@contextlib.contextmanager
def cuda_sync_error() -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode("error")`` for the duration (a no-op without CUDA)."""
    if not torch.cuda.is_available():
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def watch_steps(
    module: Any,
    counter: SyncCounter | None = None,
    sync_debug: bool = False,
    steps: tuple[str, ...] = ("training_step", "validation_step"),
) -> SyncCounter:
    """Wrap ``module``'s steps so every call runs inside ``counter`` (and, with ``sync_debug`` on
    CUDA, under the "error" sync-debug mode). Returns the counter."""
    counter = counter or SyncCounter()
    for name in steps:
        step: Callable[..., Any] = getattr(module, name)

        @functools.wraps(step)
        def wrapped(*args: Any, _step: Callable[..., Any] = step, **kwargs: Any) -> Any:
            guard = cuda_sync_error() if sync_debug else contextlib.nullcontext()
            counter.calls += 1
            with guard, counter:
                return _step(*args, **kwargs)

        setattr(module, name, wrapped)
    return counter
