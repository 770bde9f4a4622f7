"""``rtl-kernels``: one entry point, one module per subcommand group (each has ``register``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Each module defines ``register(subparsers)`` adding its subcommands with ``set_defaults(func=...)``.
COMMAND_MODULES = (
    "rtl_kernels.cli.demo",
    "rtl_kernels.cli.info",
    "rtl_kernels.cli.bench",
    "rtl_kernels.cli.pipeline",
    "rtl_kernels.cli.tune",
    "rtl_kernels.cli.merge",
    "rtl_kernels.cli.serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtl-kernels",
        description="Routing the Lottery: routed sparse subnetworks over one shared weight — kernels, pipeline, benchmarks.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"rtl-kernels {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")  # silences the failing flush at interpreter exit
        return 0
    except KeyboardInterrupt:
        print("interrupted; finished stages are saved and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
