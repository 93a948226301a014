"""Stage 1, slide files -> :class:`Slide`: channels by marker name, pyramid levels, µm/px.

``open_slide(path)`` picks the reader by content (:mod:`.open`); every reader builds on
:mod:`.base` only. :mod:`.panel` maps marker names to channels (aliases the user can extend);
:mod:`.write` is the one pyramidal OME-TIFF writer. Nothing here imports a later stage.
"""

from immunoplex.io.base import Slide
from immunoplex.io.open import open_slide

__all__ = ["Slide", "open_slide"]
