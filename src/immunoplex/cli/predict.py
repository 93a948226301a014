"""``immunoplex-predict``: predictions, heatmaps and explanations for new slides."""

from __future__ import annotations

from omegaconf import DictConfig

from immunoplex.cli.checks import validate_predict
from immunoplex.cli.common import hydra_app


def _summary(df, out_dir: str) -> str:  # type: ignore[no-untyped-def]
    lines = [f"predicted {len(df)} patient(s) -> {out_dir}/predictions.csv"]
    for row in df.head(10).itertuples():
        cal = getattr(row, "calibrated_probability", float("nan"))
        extra = f", calibrated {cal:.3f}" if cal == cal else ""
        miss = f"; missing markers {row.markers_missing}" if row.markers_missing else ""
        risk = f"risk {row.risk:+.3f}" if hasattr(row, "risk") else ""  # survival head
        if not hasattr(row, "probability"):  # task=survival: no response output
            lines.append(f"  {row.patient_id}: {risk}{miss}")
            continue
        risk = f", {risk}" if risk else ""
        lines.append(
            f"  {row.patient_id}: p={row.probability:.3f}{extra} ({row.predicted_class}){risk}{miss}"
        )
    if len(df) > 10:
        lines.append(f"  ... {len(df) - 10} more")
    return "\n".join(lines)


# `expression=PATH` is accepted as the documented spelling of the config key `expression_file`.
ARG_ALIASES = {"expression": "expression_file"}


def rewrite_args(argv: list[str]) -> list[str]:
    """``expression=PATH`` -> ``expression_file=PATH`` (other arguments unchanged)."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        out.append(f"{ARG_ALIASES[key]}={value}" if sep and key in ARG_ALIASES else arg)
    return out


@hydra_app("predict", validate_predict, rewrite_argv=rewrite_args)
def main(cfg: DictConfig) -> None:
    """Console-script entry point: predict, write the outputs, print a summary."""
    from immunoplex.inference.run import predict

    df = predict(cfg)
    print(_summary(df, str(cfg.out_dir)))


if __name__ == "__main__":
    main()
