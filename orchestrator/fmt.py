"""Number formatting for tables: short, unit-suffixed, aligned."""

from __future__ import annotations


def count(n: float) -> str:
    """1234 -> '1.23k', 2.5e9 -> '2.50G'."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def flops(c: float) -> str:
    return f"{c:.2e}"


def duration(seconds: float) -> str:
    """90 -> '1.5m', 5400 -> '1.5h', 3 days -> '3.0d'."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def console():
    """A rich console that does not squeeze wide tables into 80 columns when piped."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=220, soft_wrap=True)
