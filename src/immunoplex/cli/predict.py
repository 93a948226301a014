"""``immunoplex-predict``: predictions, heatmaps and explanations for new slides."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from immunoplex.errors import ImmunoplexError
from immunoplex.paths import config_dir


def _summary(df, out_dir: str) -> str:  # type: ignore[no-untyped-def]
    lines = [f"predicted {len(df)} patient(s) -> {out_dir}/predictions.csv"]
    for row in df.head(10).itertuples():
        cal = getattr(row, "calibrated_probability", float("nan"))
        extra = f", calibrated {cal:.3f}" if cal == cal else ""
        miss = f"; missing markers {row.markers_missing}" if row.markers_missing else ""
        lines.append(f"  {row.patient_id}: p={row.probability:.3f}{extra} "
                     f"({row.predicted_class}){miss}")
    if len(df) > 10:
        lines.append(f"  ... {len(df) - 10} more")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    from immunoplex.predict import predict

    try:
        df = predict(cfg)
    except ImmunoplexError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(_summary(df, str(cfg.out_dir)))


def main() -> None:
    """Console-script entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
