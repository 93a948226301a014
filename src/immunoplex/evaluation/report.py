"""Evaluation report as self-contained HTML (PNG figures embedded as base64) and Markdown.

The content is built once as a list of blocks (heading, paragraph, list, table, image) from the
``metrics.json`` dict and rendered twice, so the two formats never drift apart.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from immunoplex.evaluation.metrics import METRIC_LABELS
from immunoplex.utils.atomic import write_text


@dataclass
class Block:
    """One piece of report content."""

    kind: str  # "h1" | "h2" | "p" | "ul" | "table" | "img"
    content: Any
    header: Sequence[str] | None = None  # tables only


def fmt(x: float | None, digits: int = 3) -> str:
    """Number or an em dash for undefined values."""
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_ci(v: dict[str, float | None]) -> str:
    """``0.812 [0.750, 0.870]`` or what is defined of it."""
    if v.get("estimate") is None:
        return "—"
    if v.get("ci_low") is None:
        return fmt(v["estimate"])
    return f"{fmt(v['estimate'])} [{fmt(v['ci_low'])}, {fmt(v['ci_high'])}]"


def _pct(level: float) -> str:
    return f"{100 * level:g}%"


def build_blocks(r: dict[str, Any]) -> list[Block]:
    """Report content from the metrics dict written by ``evaluate_predictions``."""
    if "overall" not in r:  # survival-only model: no response probability
        b = [Block("h1", r.get("title", "Evaluation report"))]
        b.append(Block("ul", [f"Predictions: `{r['input']['predictions']}`"]))
        return b + survival_blocks(r.get("survival") or {}, r["settings"]["ci_level"])
    inp, st, ov = r["input"], r["settings"], r["overall"]
    ci = _pct(st["ci_level"])
    thr = st["threshold"]
    b: list[Block] = [Block("h1", r.get("title", "Evaluation report"))]
    b.append(
        Block(
            "ul",
            [
                f"Predictions: `{inp['predictions']}` (model name: {inp['name']})",
                f"Probability column evaluated: `{inp['prob_column']}`",
                f"Patients: {inp['n_rows']} rows; {inp['n_labelled']} labelled "
                f"({ov['n_responders']} responders, {ov['n_non_responders']} non-responders); "
                f"{inp['n_unlabelled']} unlabelled rows excluded from all metrics",
                f"Confidence intervals: {ci} {st['bootstrap']}, {st['n_boot']} replicates, "
                f"seed {st['seed']}",
                f"Decision threshold for sensitivity / specificity / balanced accuracy: "
                f"p ≥ {thr:g}; ECE with {st['ece_bins']} equal-width bins",
            ],
        )
    )
    b.append(Block("h2", "Overall metrics"))
    rows = [[METRIC_LABELS[k], fmt_ci(v)] for k, v in ov["metrics"].items()]
    b.append(Block("table", rows, ["Metric", f"Estimate [{ci} CI]"]))
    if "auroc_delong" in ov:
        d = ov["auroc_delong"]
        b.append(
            Block(
                "p",
                f"AUROC with DeLong standard error: {fmt(d['auroc'])} "
                f"(SE {fmt(d['se'])}, {ci} CI {fmt(d['ci_low'])} to {fmt(d['ci_high'])}).",
            )
        )
    if ov.get("note"):
        b.append(Block("p", f"Note: {ov['note']}."))
    plots = r.get("plots", {})
    for key, caption in (
        ("roc", "ROC curve"),
        ("pr", "Precision-recall curve"),
    ):
        if key in plots:
            b.append(Block("img", (plots[key], caption)))

    cm = r["confusion_matrix"]
    b.append(Block("h2", f"Confusion matrix at p ≥ {thr:g}"))
    b.append(
        Block(
            "table",
            [
                ["true non-responder", str(cm["tn"]), str(cm["fp"])],
                ["true responder", str(cm["fn"]), str(cm["tp"])],
            ],
            ["", "predicted non-responder", "predicted responder"],
        )
    )
    if "confusion_matrix" in plots:
        b.append(Block("img", (plots["confusion_matrix"], "Confusion matrix")))

    b.append(Block("h2", "Calibration"))
    if "calibration" in r:
        cal = r["calibration"]
        rows = [
            [METRIC_LABELS[k], fmt_ci(cal["uncalibrated"][k]), fmt_ci(cal["calibrated"][k])]
            for k in ("brier", "ece", "log_loss")
        ]
        b.append(Block("table", rows, ["Metric", "uncalibrated", "calibrated"]))
    b.append(
        Block(
            "p",
            "Reliability diagram: observed response rate against mean predicted probability "
            f"in {st['ece_bins']} equal-width bins; the lower panel counts patients per bin.",
        )
    )
    if "calibration" in plots:
        b.append(Block("img", (plots["calibration"], "Reliability diagram")))

    if "conformal" in r:
        c = r["conformal"]
        b.append(Block("h2", "Conformal prediction sets"))
        freq = ", ".join(f"{k}: {v}" for k, v in c["set_frequency"].items())
        b.append(
            Block(
                "ul",
                [
                    f"Coverage achieved (labelled patients): {fmt(c['coverage'])} "
                    f"(responders {fmt(c['coverage_responder'])}, "
                    f"non-responders {fmt(c['coverage_non-responder'])})",
                    f"Mean set size: {fmt(c['mean_set_size'], 2)}",
                    f"Set types among labelled patients: {freq}",
                ],
            )
        )

    b.append(Block("h2", "Decision curve"))
    b.append(
        Block(
            "p",
            "Net benefit = TP/n − FP/n · pt/(1 − pt) of treating patients with p ≥ pt, against "
            "treating everyone and treating no one.",
        )
    )
    if "decision_curve" in plots:
        b.append(Block("img", (plots["decision_curve"], "Decision curve")))

    for gcol, groups in r.get("groups", {}).items():
        b.append(Block("h2", f"Breakdown by {gcol}"))
        keys = list(METRIC_LABELS)
        rows = []
        notes = []
        for g, blk in groups.items():
            rows.append(
                [
                    g,
                    str(blk["n"]),
                    str(blk["n_responders"]),
                    str(blk.get("n_unlabelled", 0)),
                    *[fmt_ci(blk["metrics"][k]) for k in keys],
                ]
            )
            if blk.get("note"):
                notes.append(f"{g}: {blk['note']}")
        header = [gcol, "n", "responders", "unlabelled", *[METRIC_LABELS[k] for k in keys]]
        b.append(Block("table", rows, header))
        if notes:
            b.append(Block("ul", notes))

    if "comparison" in r:
        c = r["comparison"]
        na, nb = c["a"]["name"], c["b"]["name"]
        b.append(Block("h2", f"Paired comparison: {na} vs {nb}"))
        b.append(
            Block(
                "p",
                f"{c['n_paired_labelled']} labelled patients scored by both "
                f"({c['n_excluded_a']} patients only in `{c['a']['source']}` and "
                f"{c['n_excluded_b']} only in `{c['b']['source']}` excluded).",
            )
        )
        if "delong" in c:
            d = c["delong"]
            rows = [
                ["AUROC " + na, fmt(d["auroc_a"]), "", ""],
                ["AUROC " + nb, fmt(d["auroc_b"]), "", ""],
                [
                    "Δ AUROC (DeLong)",
                    fmt(d["difference"]),
                    f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]",
                    f"{d['p_value']:.3g} (z = {d['z']:.2f})",
                ],
            ]
            for k, v in c.get("paired_bootstrap", {}).items():
                pv = "—" if v["p_value"] is None else f"{v['p_value']:.3g}"
                rows.append(
                    [
                        f"Δ {METRIC_LABELS[k]} (paired bootstrap)",
                        fmt(v["difference"]),
                        f"[{fmt(v['ci_low'])}, {fmt(v['ci_high'])}]",
                        pv,
                    ]
                )
            b.append(Block("table", rows, ["Quantity", f"{na} − {nb}", f"{ci} CI", "p-value"]))
        if c.get("note"):
            b.append(Block("p", f"Note: {c['note']}."))
        if "plot" in c:
            b.append(Block("img", (c["plot"], "ROC curves on the shared patients")))

    if r.get("survival"):
        b += survival_blocks(r["survival"], st["ci_level"])
    if r.get("notes"):
        b.append(Block("h2", "Notes"))
        b.append(Block("ul", r["notes"]))
    return b


def _p(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _hr(h: dict[str, Any] | None) -> str:
    if not h:
        return "—"
    return (
        f"{fmt(h['hr'], 2)} [{fmt(h['ci_low'], 2)}, {fmt(h['ci_high'], 2)}], p = {_p(h['p_value'])}"
    )


def survival_blocks(s: dict[str, Any], level: float) -> list[Block]:
    """Time to event: C-indices, time-dependent AUROC, IBS, KM by risk group, calibration."""
    b = [Block("h2", f"Survival (`{s['time_column']}`, `{s['event_column']}`)")]
    b.append(
        Block(
            "p",
            f"{s['n']} patients with a time ({s['n_events']} events; {s['n_without_time']} "
            "without a time are left out). Risk = the model's `risk` (log hazard).",
        )
    )
    rows = [
        ["Harrell's C-index", fmt(s["harrell_c"])],
        [f"Uno's C-index (τ = {fmt(s['uno_tau'], 1)})", fmt(s["uno_c"])],
        *[
            [f"time-dependent AUROC at t = {a['horizon']:g}", fmt(a["auroc"])]
            for a in s["time_auc"]
        ],
        [
            f"integrated Brier score (t {fmt(s['brier_range'][0], 1)}–{fmt(s['brier_range'][1], 1)})",
            fmt(s["integrated_brier"]),
        ],
        [f"hazard ratio per SD of risk ({_pct(level)} CI)", _hr(s.get("hazard_ratio_per_sd"))],
    ]
    b.append(Block("table", rows, ["Metric", "Value"]))
    g = s["risk_groups"]
    lr = g["logrank"]
    b.append(Block("h2", f"Kaplan-Meier by predicted risk group ({g['split']})"))
    b.append(
        Block(
            "table",
            [[x["name"], x["n"], x["events"], fmt(x["median_survival"], 1)] for x in g["groups"]],
            ["Group", "Patients", "Events", "Median survival"],
        )
    )
    b.append(
        Block(
            "ul",
            [
                f"log-rank χ² = {fmt(lr['statistic'], 2)} (df {lr['df']}), p = {_p(lr['p_value'])}",
                f"hazard ratio, higher vs lower risk group ({_pct(level)} CI, Cox): "
                + _hr(g["hazard_ratio"]),
            ],
        )
    )
    if "km" in s.get("plots", {}):
        b.append(Block("img", (s["plots"]["km"], "Kaplan-Meier curves by predicted risk group")))
    if "calibration" in s:
        c = s["calibration"]
        b.append(Block("h2", f"Calibration of survival at t = {c['horizon']:g}"))
        b.append(Block("p", f"Predicted S(t) from: {s.get('calibration_source', '—')}."))
        b.append(
            Block(
                "table",
                [
                    [x["bin"] + 1, x["n"], fmt(x["predicted"]), fmt(x["observed"])]
                    for x in c["bins"]
                ],
                ["Bin (predicted S quantile)", "Patients", "Mean predicted S", "Observed S (KM)"],
            )
        )
        if "calibration" in s.get("plots", {}):
            b.append(Block("img", (s["plots"]["calibration"], "Survival calibration")))
    if s.get("notes"):
        b.append(Block("ul", s["notes"]))
    return b


def render_markdown(blocks: list[Block], image_dir: str = "plots") -> str:
    """Markdown; images are linked relative to the report (``plots/*.png``)."""
    out: list[str] = []
    for blk in blocks:
        if blk.kind == "h1":
            out.append(f"# {blk.content}\n")
        elif blk.kind == "h2":
            out.append(f"## {blk.content}\n")
        elif blk.kind == "p":
            out.append(f"{blk.content}\n")
        elif blk.kind == "ul":
            out.append("\n".join(f"- {x}" for x in blk.content) + "\n")
        elif blk.kind == "table":
            header = list(blk.header or [""] * len(blk.content[0]))
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in blk.content]
            out.append("\n".join(lines) + "\n")
        elif blk.kind == "img":
            name, caption = blk.content
            out.append(f"![{caption}]({image_dir}/{name})\n")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #1f77b4;padding-bottom:.2em}h2{margin-top:1.8em;color:#1f4e79}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#eef3f8}
tr:nth-child(even) td{background:#fafafa}code{background:#f2f2f2;padding:0 .25em}
figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.85em;color:#555}
img{max-width:100%;border:1px solid #ddd}
"""


def _inline(text: str) -> str:
    """Escape HTML and turn `code` spans into <code>."""
    parts = html.escape(str(text)).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks: list[Block], image_dir: Path) -> str:
    """Self-contained HTML: every PNG is embedded as a base64 data URI."""
    title = next((b.content for b in blocks if b.kind == "h1"), "Evaluation report")
    body: list[str] = []
    for blk in blocks:
        if blk.kind in ("h1", "h2"):
            body.append(f"<{blk.kind}>{_inline(blk.content)}</{blk.kind}>")
        elif blk.kind == "p":
            body.append(f"<p>{_inline(blk.content)}</p>")
        elif blk.kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in blk.content) + "</ul>")
        elif blk.kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in blk.header or [])
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                for row in blk.content
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif blk.kind == "img":
            name, caption = blk.content
            data = base64.b64encode((image_dir / name).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(str(title))}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_reports(result: dict[str, Any], out_dir: Path, image_dir: str = "plots") -> None:
    """Write ``report.md`` and the self-contained ``report.html`` into ``out_dir``."""
    out_dir = Path(out_dir)
    blocks = build_blocks(result)
    write_text(out_dir / "report.md", render_markdown(blocks, image_dir))
    write_text(out_dir / "report.html", render_html(blocks, out_dir / image_dir))
