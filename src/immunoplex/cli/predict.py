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
        lines.append(
            f"  {row.patient_id}: p={row.probability:.3f}{extra} ({row.predicted_class}){miss}"
        )
    if len(df) > 10:
        lines.append(f"  ... {len(df) - 10} more")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    from immunoplex.inference.run import predict

    try:
        df = predict(cfg)
    except ImmunoplexError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(_summary(df, str(cfg.out_dir)))


# `expression=PATH` is accepted as the documented spelling of the config key `expression_file`.
ARG_ALIASES = {"expression": "expression_file"}


def rewrite_args(argv: list[str]) -> list[str]:
    """``expression=PATH`` -> ``expression_file=PATH`` (other arguments unchanged)."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        out.append(f"{ARG_ALIASES[key]}={value}" if sep and key in ARG_ALIASES else arg)
    return out


def main() -> None:
    """Console-script entry point."""
    sys.argv[1:] = rewrite_args(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
