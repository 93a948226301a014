"""Training: LightningModule, metrics, callbacks, checkpoints, the run, CV and embedding.

:mod:`.run` (``train(cfg)``, the whole run), :mod:`.module` (the LightningModule around a
``models.ResponseModel``), :mod:`.metrics` (torchmetrics for logging), :mod:`.callbacks`,
:mod:`.checkpoint` (schema, loading with ``weights_only``, models built from a closed registry),
:mod:`.inference` (every patient once), :mod:`.cv` (one run per fold) and :mod:`.embed`
(two-stage embedding cache, attached to a set-up DataModule by the run).
"""
