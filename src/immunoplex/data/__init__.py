"""Stage 3, prepared artefacts -> patients: cohort manifest, patient-level splits, bags, DataModule.

:mod:`.cohort` reads the manifest, labels and expression join; :mod:`.splits` makes fixed, k-fold,
nested and leave-one-cohort-out splits by patient; :mod:`.bags` turns a patient's slides into
bags of tiles or embeddings (the batch contract in docs/ARCHITECTURE.md); :mod:`.transforms`
normalises and augments tiles on the device; :mod:`.datamodule` is the Lightning DataModule,
which only reads what the tile cache (and, in two-stage mode, ``training.embed``) prepared.
"""
