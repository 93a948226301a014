"""``immunoplex-eval``: evaluate a predictions CSV and write metrics.json + HTML/Markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from immunoplex.cli.checks import validate_eval
from immunoplex.cli.common import hydra_app
from immunoplex.errors import ConfigError


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate as configured by ``configs/eval.yaml``; returns the metrics dict."""
    if OmegaConf.is_missing(cfg, "predictions") or not cfg.predictions:
        raise ConfigError("eval: predictions=PATH is required")
    from immunoplex.evaluation.run import evaluate_predictions  # heavy (scipy, matplotlib): lazy

    group_by = cfg.group_by
    if isinstance(group_by, str):
        group_by = [group_by]
    return evaluate_predictions(
        Path(cfg.predictions),
        Path(cfg.out_dir),
        threshold=float(cfg.threshold),
        group_by=list(group_by or []),
        n_boot=int(cfg.n_boot),
        seed=int(cfg.seed),
        level=float(cfg.ci_level),
        ece_bins=int(cfg.ece_bins),
        prob_column=str(cfg.prob_column),
        compare=None if cfg.compare in (None, "") else Path(cfg.compare),
        compare_prob_column=str(cfg.compare_prob_column),
        intersect=bool(cfg.intersect),
        name=cfg.name,
        compare_name=cfg.compare_name,
        roc_band_boot=None if cfg.roc_band_boot is None else int(cfg.roc_band_boot),
        title=str(cfg.title),
        survival_groups=int(cfg.get("survival_groups", 2)),
        survival_horizons=cfg.get("survival_horizons"),
        survival_time_column=cfg.get("survival_time_column"),
        survival_event_column=cfg.get("survival_event_column"),
    )


def _survival_line(s: dict[str, Any]) -> str:
    lr, hr = s["risk_groups"]["logrank"], s["risk_groups"]["hazard_ratio"]
    return (
        f"survival ({s['time_column']}, {s['n']} patients, {s['n_events']} events): "
        f"C-index {s['harrell_c']:.3f}, log-rank p = {lr['p_value']:.3g}, "
        f"HR {hr['hr']:.2f} [{hr['ci_low']:.2f}, {hr['ci_high']:.2f}]"
    )


def _summary(result: dict[str, Any], out_dir: str) -> str:
    if "overall" not in result:  # survival-only predictions
        return "\n".join(
            [_survival_line(result["survival"]), f"report: {Path(out_dir) / 'report.html'}"]
        )
    m = result["overall"]["metrics"]["auroc"]
    inp = result["input"]
    auc = "undefined" if m["estimate"] is None else f"{m['estimate']:.3f}"
    if m.get("ci_low") is not None:
        auc += f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
    lines = [
        f"evaluated {inp['n_labelled']} labelled patients "
        f"({inp['n_unlabelled']} unlabelled excluded) from {inp['predictions']}",
        f"AUROC {auc}",
    ]
    if "delong" in result.get("comparison", {}):
        d = result["comparison"]["delong"]
        lines.append(
            f"vs {result['comparison']['b']['name']}: dAUROC {d['difference']:+.3f}, "
            f"DeLong p = {d['p_value']:.3g}"
        )
    if result.get("survival"):
        lines.append(_survival_line(result["survival"]))
    lines.append(f"report: {Path(out_dir) / 'report.html'}")
    return "\n".join(lines)


@hydra_app("eval", validate_eval)
def main(cfg: DictConfig) -> None:
    """Console-script entry point: evaluate, write the report, print a summary."""
    result = run(cfg)
    print(_summary(result, cfg.out_dir))


if __name__ == "__main__":
    main()
