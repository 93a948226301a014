"""``immunoplex-inspect PATH [--json]``: what a slide is (format, channels, levels, dtype, µm/px)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from immunoplex.cli.common import EXIT_USAGE, run_cli
from immunoplex.errors import ConfigError, SlideReadError
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
        f"names from: {info.get('channel_source', 'file')}",
        "levels (height x width, µm/px):",
    ]
    for i, ((h, w), lm) in enumerate(zip(info["levels"], info["level_mpp"], strict=True)):  # type: ignore[arg-type]
        lines.append(f"  {i}: {h} x {w}" + (f"  ({lm:.4g})" if lm else ""))
    return "\n".join(lines)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def reader_warnings() -> Iterator[list[str]]:
    """Collect (and hide) tifffile's own log messages and Python warnings while reading."""
    log = logging.getLogger("tifffile")
    handler = _Collect()
    saved = (log.handlers[:], log.propagate, log.level)
    log.handlers, log.propagate = [handler], False
    log.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield handler.messages
            handler.messages.extend(str(w.message) for w in caught)
    finally:
        log.handlers, log.propagate = saved[0], saved[1]
        log.setLevel(saved[2])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="immunoplex-inspect", description=__doc__)
    parser.add_argument("path", help="slide file or folder of single-channel TIFFs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--mpp", type=float, default=None, help="µm/px override")
    parser.add_argument(
        "--channel-names",
        metavar="FILE",
        default=None,
        help="names for a file that carries none (one per line, or a panel CSV with 'name')",
    )

    def _error(message: str) -> None:
        raise ConfigError(f"arguments: {message} (see immunoplex-inspect --help)")

    parser.error = _error  # type: ignore[method-assign]
    return parser


def _inspect(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.mpp is not None and not args.mpp > 0:
        raise ConfigError(f"--mpp: must be a number > 0, got {args.mpp}")
    info: dict[str, Any]
    with reader_warnings() as notes:
        try:
            with open_slide(args.path, mpp=args.mpp, names_file=args.channel_names) as slide:
                info = slide.describe()
        except (ValueError, IndexError, KeyError, OSError, MemoryError) as err:
            if isinstance(err, OSError) and err.filename is not None:
                raise
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise SlideReadError(f"{args.path}: corrupt or unreadable slide ({reason})") from None
    print(json.dumps(info, indent=2) if args.json else format_text(info))
    if notes:
        print(
            f"warning: {args.path}: the file's structure is inconsistent ({len(notes)} reader "
            "message(s), e.g. a series shape that does not match its pages); the values above "
            "may be incomplete",
            file=sys.stderr,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: 0 on success; a bad path or file is one line and exit 2."""
    try:
        return int(run_cli(lambda: _inspect(argv)))
    except SystemExit as exc:
        if argv is None:
            raise
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
