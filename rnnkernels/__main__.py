"""``python -m rnnkernels``: versions, machine, extension build, backends and settings, then a
few-second self-check against torch.nn (see ``rnnkernels/diagnostics.py``). Paste its output into
a bug report. Exit status 1 when a self-check fails."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rnnkernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--no-check", action="store_true", help="skip the self-check against torch.nn")
    p.add_argument("--full", action="store_true",
                   help="also self-check Triton under its CPU interpreter (minutes)")
    args = p.parse_args(argv)
    from . import diagnostics  # noqa: PLC0415  (after argparse: --help stays instant)
    # Anything printed while collecting (a first-use build of the extension says what it does)
    # goes to stderr, so that with --json stdout is the one JSON object and nothing else.
    with contextlib.redirect_stdout(sys.stderr):
        rep = diagnostics.report(check=not args.no_check, full=args.full)
    print(json.dumps(rep, indent=2) if args.json else diagnostics.format_report(rep))
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
