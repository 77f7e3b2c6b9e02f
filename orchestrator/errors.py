"""The one error type the CLI turns into a one-line message and exit status 2."""

import difflib
import sys

_reported: set[str] = set()


class UsageError(ValueError):
    """Bad input from the user: a typo, an unknown name, an invalid value.

    The CLI prints ``error: <message>`` on stderr and exits with status 2; nothing is
    submitted or written. Library callers get an ordinary ``ValueError``.
    """


def unknown(kind: str, value, valid) -> UsageError:
    """``unknown partition 'sphnix' (did you mean 'sphinx'?); known: local, miso, sphinx``.

    Names are compared case-folded (``quickstart`` finds ``QUICKSTART``, which difflib alone
    rates too far apart to suggest); the suggestion shows the name as it is spelled.
    """
    valid = sorted(str(v) for v in valid)
    folded = {name.casefold(): name for name in valid}
    close = difflib.get_close_matches(str(value).casefold(), folded, n=1, cutoff=0.5)
    hint = f" (did you mean {folded[close[0]]!r}?)" if close else ""
    return UsageError(f"unknown {kind} {value!r}{hint}; known: {', '.join(valid) or '(none)'}")


def report_unreadable(path, problem: str) -> None:
    """One line on stderr, once per file and process, for a file that cannot be used.

    The file is left exactly as it is (never deleted or rewritten); the caller goes on
    without it, so one torn file never takes the rest of a command down.
    """
    key = str(path)
    if key not in _reported:
        _reported.add(key)
        print(f"warning: skipping unreadable {path}: {problem}", file=sys.stderr)


def note_once(message: str) -> None:
    """A one-line note on stderr, once per process (a degraded mode the user should know of)."""
    if message not in _reported:
        _reported.add(message)
        print(f"note: {message}", file=sys.stderr)
