"""The one error type the CLI turns into a one-line message and exit status 2."""

import difflib


class UsageError(ValueError):
    """Bad input from the user: a typo, an unknown name, an invalid value.

    The CLI prints ``error: <message>`` on stderr and exits with status 2; nothing is
    submitted or written. Library callers get an ordinary ``ValueError``.
    """


def unknown(kind: str, value, valid) -> UsageError:
    """``unknown partition 'sphnix' (did you mean 'sphinx'?); known: local, miso, sphinx``."""
    valid = sorted(str(v) for v in valid)
    close = difflib.get_close_matches(str(value), valid, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"unknown {kind} {value!r}{hint}; known: {', '.join(valid) or '(none)'}")
