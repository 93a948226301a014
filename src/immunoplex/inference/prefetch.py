"""Prepare the next slides while the current one is encoded (streamed predict, issue 19.3).

Preparing a slide — open it, match the panel, detect tissue and build the tile grid, fit its
intensity statistics on a sample of tiles (which are kept and encoded first) — needs no model.
:class:`SlidePrefetcher` does it in one background thread, in the order the run will encode the
slides, at most ``ahead`` slides ahead of the one taken last, so slide k+1's reading, tissue
detection and statistics overlap slide k's encoding. Memory stays bounded: a prepared slide holds
its grid and its statistics sample (at most ``IntensityNorm.fit``'s pixel budget).

Used when predict's ``prefetch`` option is on (``auto``: with 2 or more cores; see
``PredictOptions.overlap``). Errors raised while preparing are re-raised by
:meth:`SlidePrefetcher.take` in the caller's thread, so ``on_bad_slide`` handling is unchanged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from immunoplex.data.slides import fit_slide_norm
from immunoplex.inference.stream import LazyTiles, OpenedSlide, open_for_streaming


def prepare_slide(pred: Any, s: Any) -> OpenedSlide:
    """Open ``s`` (a SlideInput) for streaming and, for a model with an image branch, fit its
    statistics (``OpenedSlide.lazy``/``norm`` set)."""
    o = open_for_streaming(
        s.path, s.slide_id, pred.panel, pred.params, s.mpp, pred.required, s.channel_names
    )
    try:
        if "image" in pred.modalities and len(o.grid):
            lazy = LazyTiles(o, len(pred.markers))
            o.norm = fit_slide_norm(lazy, o.present, o.grid.coords, pred.low_pct, pred.high_pct)
            o.lazy = lazy
    except BaseException:
        o.close()
        raise
    return o


def _key(s: Any) -> tuple[str, str]:
    return (str(s.slide_id), str(s.path))


class SlidePrefetcher:
    """Slides prepared in a background thread, in schedule order, ``ahead`` beyond the last taken."""

    def __init__(self, prepare: Callable[[Any], OpenedSlide], ahead: int = 1) -> None:
        self._prepare = prepare
        self._ahead = max(0, int(ahead))
        self._queue: deque[Any] = deque()  # scheduled, not yet submitted
        self._futures: dict[tuple[str, str], Future[OpenedSlide]] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="immunoplex-prepare")

    def schedule(self, slides: Iterable[Any]) -> None:
        """Slides (SlideInputs) in the order they will be taken."""
        self._queue.extend(slides)
        self._fill()

    def _fill(self) -> None:
        # ``ahead`` + 1 in flight: the next one to be taken and ``ahead`` more beyond it
        while self._queue and len(self._futures) <= self._ahead:
            s = self._queue.popleft()
            key = _key(s)
            if key not in self._futures:
                self._futures[key] = self._pool.submit(self._prepare, s)

    def take(self, s: Any) -> OpenedSlide:
        """The prepared slide ``s`` (prepared now if it was never scheduled); the caller closes
        it. Re-raises what preparing it raised."""
        fut = self._futures.pop(_key(s), None)
        if fut is None:
            # not scheduled (or dropped from the queue): prepare it here, in order
            self._queue = deque(q for q in self._queue if _key(q) != _key(s))
            self._fill()
            return self._prepare(s)
        try:
            return fut.result()
        finally:
            self._fill()

    def close(self) -> None:
        """Stop: nothing more is prepared; slides prepared and not taken are closed."""
        self._queue.clear()
        for fut in self._futures.values():
            fut.cancel()
        self._pool.shutdown(wait=True)
        for fut in self._futures.values():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result().close()
        self._futures.clear()

    def __enter__(self) -> SlidePrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
