"""`clinseg` command line.

Exit codes a script can rely on:
  0 success; 1 unexpected internal error; 2 bad input (file, folder, prompt, option);
  3 model weights missing or unusable; 4 nothing found (empty mask, unknown structure).
Errors print one line to stderr starting with "error:"; results go to stdout.
Each subcommand lives in its own module with `register(subparsers)`; add new ones to COMMANDS.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_WEIGHTS, EXIT_NOTHING = 0, 1, 2, 3, 4

COMMANDS = (
    "app.cli_core",
    "app.cli_triage",
    "app.cli_batch",
    "app.cli_speed",
    "app.cli_text",
    "app.cli_volume",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clinseg", description="Multimodal clinical segmentation assistant (SAM / LiteMedSAM).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # clinseg never reaches a model hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from integrations.errors import ClinsegInputError, ModelWeightsError, NothingFoundError

    try:
        return int(args.func(args) or 0)
    except ClinsegInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except ModelWeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_WEIGHTS
    except NothingFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NOTHING
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the last line of defence: one readable line, details only with -v
        logging.getLogger("clinseg").debug("internal error", exc_info=True)
        print(f"error: internal error ({type(e).__name__}: {e}); rerun with -v and report it", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
