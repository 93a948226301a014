"""Evaluation: predictions + labels -> metrics with CIs, comparisons, calibration, reports.

:mod:`.metrics` is the one AUROC/AUPRC/Brier/ECE implementation and the one stratified bootstrap;
:mod:`.compare` (DeLong, paired bootstrap), :mod:`.calibration` (temperature scaling, conformal
sets), :mod:`.plots`, :mod:`.report` (HTML), :mod:`.inputs` (reading prediction files),
:mod:`.loco` (leave-one-cohort-out benchmark of expression models against signatures) and
:mod:`.run` (``immunoplex-eval``).
"""
