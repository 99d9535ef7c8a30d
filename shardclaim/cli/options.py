"""What every command's options share: value types that refuse nonsense at parse time (a usage error,
exit 2, like any other argparse error), and both spellings of every long option (``--lease-seconds`` and
``--lease_seconds``: the seed's scripts use underscores)."""

from __future__ import annotations

import argparse
import math

__all__ = [
    "both_spellings",
    "budget",
    "lease_seconds",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "show_defaults",
]

#: The longest lease anyone may take (the same bound as the manager's: a week).
_MAX_LEASE = 7 * 24 * 3600.0


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    """A shard id, a chunk index: 0 or more."""
    return _whole(text, 0)


def budget(text: str) -> int:
    """A retry budget: 1 to 10,000 (the manager's own bounds)."""
    value = positive_int(text)
    if value > 10_000:
        raise argparse.ArgumentTypeError(f"must be at most 10000, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < math.inf:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def lease_seconds(text: str) -> float:
    value = positive_float(text)
    if value < 0.1:
        raise argparse.ArgumentTypeError(f"must be at least 0.1 s, got {text}")
    if value > _MAX_LEASE:
        raise argparse.ArgumentTypeError(f"must be at most {_MAX_LEASE:.0f} s (a week), got {text}")
    return value


def both_spellings(parser: argparse.ArgumentParser) -> None:
    """Give every long option of ``parser`` and of its subcommands its other spelling (``-``/``_``)."""
    for action in list(parser._actions):  # argparse has no public way to add an alias afterwards
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                both_spellings(sub)
            continue
        for option in list(action.option_strings):
            if not option.startswith("--"):
                continue
            for other in ("--" + option[2:].replace("_", "-"), "--" + option[2:].replace("-", "_")):
                if other not in parser._option_string_actions:
                    action.option_strings = [*action.option_strings, other]
                    parser._option_string_actions[other] = action


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """End the help of every option of ``parser`` and its subcommands that has a default with
    ``(default: X)``, unless its help already says it; keep help text as written (line breaks too)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                show_defaults(sub)
            continue
        default = action.default
        if (
            not action.option_strings
            or action.help in (None, argparse.SUPPRESS)
            or default in (None, False, argparse.SUPPRESS)
            or isinstance(action, argparse._VersionAction | argparse._HelpAction)
        ):
            continue
        text = str(action.help)
        if "default" in text.lower() or f"({default})" in text:
            continue
        shown = f"{default:g}" if isinstance(default, float) else default
        action.help = f"{text} (default: {shown})".replace("%", "%%").replace("%%(", "%(")
