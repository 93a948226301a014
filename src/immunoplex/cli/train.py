"""`immunoplex-train`: Hydra entry point around :func:`immunoplex.training.run.train`."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from immunoplex.cli.checks import validate_train
from immunoplex.cli.common import hydra_app


def format_summary(summary: dict[str, Any]) -> str:
    """The short report printed at the end of a run."""

    def fmt(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    n = summary.get("n_patients", {})
    lines = [
        "",
        "=== immunoplex training summary ===",
        f"split: {summary.get('split')}  patients train/val/test: "
        f"{n.get('train')}/{n.get('val')}/{n.get('test')}",
        f"held-out (test) AUROC:         {fmt(summary.get('test_auroc'))}",
    ]
    if summary.get("test_bayes_auroc") is not None:
        lines.append(f"Bayes-optimal AUROC (same patients): {fmt(summary.get('test_bayes_auroc'))}")
    lines.append(f"validation AUROC:              {fmt(summary.get('val_auroc'))}")
    cal = summary.get("calibration") or {}
    if summary.get("temperature") is not None:
        where = "out of fold" if summary.get("crossfit") else "on val"
        t, t_fit = summary["temperature"], cal.get("temperature_fitted")
        if t_fit is not None and t == 1.0 and abs(t_fit - 1.0) > 1e-9:
            stat = cal.get("temperature_lr_statistic")
            lines.append(
                f"temperature:                   1.000 (fitted {where} {t_fit:.3f}, not kept: "
                f"likelihood ratio {stat:.2f}, T = 1 not rejected)"
            )
        else:
            lines.append(f"temperature (fitted {where}):   {t:.3f}")
    if cal.get("offset"):
        lines.append(f"prior-shift offset (log pos_weight): {cal['offset']:.3f}")
    if summary.get("skipped_slides"):
        lines.append(f"skipped slides: {len(summary['skipped_slides'])} (see the log)")
    lines += [
        f"checkpoint: {summary.get('checkpoint')}",
        f"run dir (logs, predictions, config): {summary.get('run_dir')}",
    ]
    return "\n".join(lines)


@hydra_app("train", validate_train)
def main(cfg: DictConfig) -> float | None:
    """Train one model (``configs/train.yaml``); returns the validation AUROC for sweepers."""
    from immunoplex.training.run import train

    summary = train(cfg)
    if summary:
        print(format_summary(summary))
        metric = summary.get("val_auroc")
        return float(metric) if metric is not None else None
    return None


if __name__ == "__main__":
    main()
