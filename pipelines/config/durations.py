"""Human durations on the command line: 72h, 90m, 3600s, 3d, or a bare number of seconds."""
from __future__ import annotations

import argparse
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 72h, 90m, 3600s or 3d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
