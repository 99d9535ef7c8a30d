"""The live view's text: pure functions of a :class:`~shardclaim.view.follow.Look` and a terminal size.

A frame is at most ``height - 1`` lines of at most ``width`` visible characters, whatever the number of
shards: the grid gives each shard a cell while they fit and otherwise lets one cell stand for ``k``
consecutive shards, drawn as the most urgent state among them (failed, invalid, expired, running,
available, completed: a cell is ``completed`` only when all of its shards are). Each state has a glyph
as well as a colour, so the grid reads without colour too (``NO_COLOR``, a dumb terminal).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC

from shardclaim.idranges import compact
from shardclaim.rate import format_duration
from shardclaim.view.follow import Look
from shardclaim.view.snapshot import SHOWN_STATES, Shown, shown_state

__all__ = ["GLYPHS", "cell_states", "format_duration", "frame", "line"]

#: Each shown state's glyph and ANSI colour (SGR parameters).
GLYPHS: dict[Shown, tuple[str, str]] = {
    "completed": ("#", "32"),
    "in_use": (">", "36;1"),
    "expired": ("!", "33;1"),
    "available": (".", "2"),
    "failed": ("X", "31;1"),
    "invalid": ("?", "35;1"),
    "missing": (" ", "0"),
}
_NAMES: dict[Shown, str] = {"completed": "completed", "in_use": "running", "expired": "expired",
                            "available": "available", "failed": "failed", "invalid": "invalid",
                            "missing": "missing"}  # fmt: skip
#: A cell that stands for several shards shows the first of these states that any of them is in.
_URGENCY: tuple[Shown, ...] = ("failed", "invalid", "expired", "in_use", "available", "missing", "completed")

Segment = tuple[str, str | None]  # text, SGR colour


def cell_states(states: Sequence[Shown], per_cell: int) -> list[Shown]:
    """The state each cell shows when one cell stands for ``per_cell`` consecutive shards."""
    out: list[Shown] = []
    for start in range(0, len(states), per_cell):
        group = set(states[start : start + per_cell])
        out.append(next(s for s in _URGENCY if s in group))
    return out


#: Escape sequences and control characters in what documents say (a command's coloured stderr, a hostile
#: worker id): drawn as text, never sent to the terminal.
_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|.)?")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clean(text: str) -> str:
    return _CONTROLS.sub("?", _ESCAPES.sub("", text))


def _render(segments: Sequence[Segment], width: int, color: bool) -> str:
    out, room = [], width
    for whole, sgr in segments:
        text = _clean(whole)[:room]
        room -= len(text)
        if text:
            out.append(f"\x1b[{sgr}m{text}\x1b[0m" if color and sgr else text)
        if room <= 0:
            break
    return "".join(out)


def _grid_row(cells: Sequence[Shown]) -> list[Segment]:
    """One row of cells, runs of one state as one segment (one colour escape per run, not per cell)."""
    row: list[Segment] = []
    for state in cells:
        glyph, sgr = GLYPHS[state]
        if row and row[-1][1] == sgr:
            row[-1] = (row[-1][0] + glyph, sgr)
        else:
            row.append((glyph, sgr))
    return row


def _header(look: Look) -> list[Segment]:
    snap = look.snapshot
    when = snap.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    state = str(snap.summary["state"])
    sgr = {"succeeded": "32;1", "failed": "31;1", "halted": "31;1"}.get(state, "1")
    return [(f"{snap.dataset}  ", "1"), (state, sgr), (f"  {snap.summary['shards']:,} shards  {when}", None)]


def _progress_lines(look: Look) -> list[list[Segment]]:
    snap = look.snapshot
    done = int(snap.summary["records_done"])
    pct = f" ({100 * done / snap.records_total:.1f}%)" if snap.records_total else ""
    text = f"records {done:,}/{snap.records_total:,}{pct}"
    if snap.chunks_total is not None:
        text += f"  chunks {snap.chunks_done or 0:,}/{snap.chunks_total:,}"
    if look.rates is None:
        rate = "rate: measuring (needs two looks)"
    else:
        per_record, per_shard = look.rates
        over = format_duration(look.window_s)
        rate = f"rate {per_record:,.0f} records/s, {per_shard:.2f} shards/s over {over}"
    rate += "" if snap.settled else f"  ETA {format_duration(look.eta_s)}"
    return [[(text, None)], [(rate, None)]]


def _id_lines(look: Look, width: int) -> list[list[Segment]]:
    """The sets worth naming in full: failed, invalid, expired (compact ranges, cut to the width)."""
    ids = look.snapshot.ids
    out = []
    for state in ("failed", "invalid", "expired"):
        if ids.get(state):
            label = f"{_NAMES[state]}: "
            out.append(
                [(label, GLYPHS[state][1]), (compact(ids[state], limit=max(20, width - len(label))), None)]
            )
    return out


def _legend(counts: dict[str, int], per_cell: int) -> list[Segment]:
    segs: list[Segment] = [(f"1 cell = {per_cell:,} shards " if per_cell > 1 else "", None)]
    for state in SHOWN_STATES:
        n = counts.get(state, 0)
        if n or state in ("completed", "in_use", "available"):
            glyph, sgr = GLYPHS[state]
            segs += [(glyph, sgr), (f" {_NAMES[state]} {n:,}  ", None)]
    return segs


def _slow_lines(look: Look) -> list[list[Segment]]:
    if not look.slowest:
        return []
    lines: list[list[Segment]] = [[("slowest running (holder, heartbeat age, running for at least):", "1")]]
    for r in look.slowest:
        mark = ("  EXPIRED", GLYPHS["expired"][1]) if r.expired else ("", None)
        age, running = format_duration(r.heartbeat_age_s), format_duration(r.seen_running_s)
        text = f"  {r.shard_id:>6} {r.holder or '?'}  heartbeat {age} ago  running >= {running}"
        lines.append([(text, None), mark])
    return lines


def _failure_lines(look: Look) -> list[list[Segment]]:
    if not look.failures:
        return []
    lines: list[list[Segment]] = [[("latest failures:", GLYPHS["failed"][1])]]
    for f in look.failures:
        tries = f" ({f.failures} failed attempt{'s' if f.failures != 1 else ''})" if f.failures else ""
        lines.append([(f"  {f.shard_id:>6}{tries}: {f.error}", None)])
    return lines


def frame(look: Look, width: int, height: int, *, color: bool = False) -> list[str]:
    """The live view as lines (no trailing newline), at most ``height - 1`` of at most ``width``."""
    width, height = max(width, 20), max(height, 8)
    snap = look.snapshot
    states = [shown_state(s) for s in snap.statuses]
    top: list[list[Segment]] = [_header(look)]
    if snap.halt is not None:
        from shardclaim.lease.halt import describe

        top.append([(describe(snap.halt, snap.dataset), "31;1")])
    bottom = [*_progress_lines(look), *_id_lines(look, width)]
    slow, failures = _slow_lines(look), _failure_lines(look)
    # The grid gets what the fixed lines leave, keeping up to three named shards of each list in view.
    reserved = min(len(slow), 4) + min(len(failures), 4)
    room = max(1, height - 1 - len(top) - 1 - len(bottom) - reserved)
    per_cell = max(1, math.ceil(len(states) / (width * room)))
    cells = cell_states(states, per_cell)
    grid = [_grid_row(cells[i : i + width]) for i in range(0, len(cells), width)]
    body: list[list[Segment]] = [*top, *grid, _legend(snap.summary["counts"], per_cell), *bottom]
    left = max(0, height - 1 - len(body))
    # Both lists share what is left; either takes all of it when the other is empty.
    n_slow = min(len(slow), 4 if failures else left)
    n_failures = min(len(failures), left - n_slow)
    n_slow = min(len(slow), left - n_failures)
    body += slow[:n_slow] + failures[:n_failures]
    return [_render(segs, width, color) for segs in body[: height - 1]]


def line(look: Look) -> str:
    """The whole look on one line (output that is not a terminal: a log, ``| tee``)."""
    snap = look.snapshot
    counts = snap.summary["counts"]
    when = snap.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    done, total = counts.get("completed", 0), snap.summary["shards"]
    parts = [f"{when} {snap.summary['state']}: {done}/{total} completed"]
    parts += [f"{counts[s]} {_NAMES[s]}" for s in SHOWN_STATES[1:] if counts.get(s)]
    text = ", ".join(parts) + f"; records {snap.summary['records_done']}/{snap.records_total}"
    if look.rates is not None:
        text += f"; {look.rates[0]:.0f} records/s"
    if not snap.settled:
        text += f"; ETA {format_duration(look.eta_s)}"
    ids = snap.ids
    for state in ("failed", "invalid", "expired"):
        if ids.get(state):
            text += f"; {_NAMES[state]}: {compact(ids[state], limit=200)}"
    return text
