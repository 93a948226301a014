"""Expression: tables of samples x genes -> normalised features and expression-only models.

:mod:`.io` reads CSV/TSV/Parquet/AnnData (:mod:`.h5ad`) into samples x genes; :mod:`.genes`
harmonises gene symbols against a model's list with an explicit report; :mod:`.normalise` is the
per-cohort normaliser stored in checkpoints; :mod:`.signatures` scores the classic signatures;
:mod:`.linear` (elastic net) and :mod:`.mlp` are expression-only models; :mod:`.icb` prepares the
public ICB cohorts. Upstream of ``data`` and ``models``' users; imports no later stage.
"""
