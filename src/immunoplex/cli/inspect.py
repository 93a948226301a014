"""``immunoplex-inspect PATH [--json]``: what a slide is (format, channels, levels, dtype, µm/px)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from immunoplex.errors import ImmunoplexError
from immunoplex.io import open_slide


def format_text(info: dict[str, object]) -> str:
    """Human-readable summary of ``Slide.describe()``."""
    mpp = info["mpp"]
    lines = [
        f"path:     {info['path']}",
        f"format:   {info['format']}",
        f"dtype:    {info['dtype']}",
        f"µm/px:    {mpp if mpp is not None else 'unknown (set mpp in the manifest or config)'}",
        f"channels ({len(info['channels'])}): " + ", ".join(info["channels"]),  # type: ignore[arg-type]
        "levels (height x width, µm/px):",
    ]
    for i, ((h, w), lm) in enumerate(zip(info["levels"], info["level_mpp"], strict=True)):  # type: ignore[arg-type]
        lines.append(f"  {i}: {h} x {w}" + (f"  ({lm:.4g})" if lm else ""))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="immunoplex-inspect", description=__doc__)
    parser.add_argument("path", help="slide file or folder of single-channel TIFFs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--mpp", type=float, default=None, help="µm/px override")
    args = parser.parse_args(argv)
    try:
        with open_slide(args.path, mpp=args.mpp) as slide:
            info = slide.describe()
    except ImmunoplexError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
