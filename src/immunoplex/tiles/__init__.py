"""Stage 2, Slide -> tiles: tissue mask, tile grid, tile cache, intensity normalisation, QC.

In: a :class:`immunoplex.io.Slide` and :class:`.params.TilingParams` (physical: µm/px, tile size,
tissue fraction). Out: a :class:`.params.TileGrid` (coordinates at the tiling µm/px), tiles as
``(N, C, T, T)`` arrays in panel order (:mod:`.grid`, :mod:`.cache`), per-channel
:class:`.intensity.IntensityNorm` statistics and a QC thumbnail (:mod:`.qc`, the one colour
composite). Everything reads in bounded memory (:mod:`.resample`, :mod:`.tissue`).
"""
