"""Multiplex slide readers: one Slide interface over OME-TIFF, QPTIFF, MIBItiff, TIFF, folders."""

from immunoplex.io.slide import Slide, open_slide

__all__ = ["Slide", "open_slide"]
