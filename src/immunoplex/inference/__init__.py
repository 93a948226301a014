"""Inference: a checkpoint plus new slides (and expression, clinical values) -> predictions.

:mod:`.run` (``predict(cfg)``, the whole run) -> :mod:`.inputs` (slides, manifests, clinical,
expression matched to the checkpoint) -> :mod:`.patient` (one patient: cached or :mod:`.stream`-ed
slides -> embeddings -> probability, resume key) -> :mod:`.outputs` (``predictions.csv/json``).
:mod:`.predictor` holds the loaded model and its preprocessing; :mod:`.explain`,
:mod:`.heatmaps`, :mod:`.slideheat` and :mod:`.render` write explanations, QuPath/napari
heatmaps and pictures. Every preprocessing value comes from the checkpoint.
"""
