"""Local globs for file tasks where ``glob.glob`` would go wrong, and what a file task may never be.

* ``**`` (:func:`double_star`): ``glob.glob(recursive=True)`` follows symbolic links to directories, so
  a link back to an ancestor makes every file below it a match ~40 times over (until ``ELOOP``) and two
  such links never end. Here ``**`` descends through real directories only, like ``find`` without
  ``-L``, and visits each directory once (a bind mount that loops ends too). Otherwise it matches as
  ``glob`` does: zero or more directories, hidden names (a leading ``.``) left out unless the pattern's
  component starts with one, and a symbolic link to a file is an entry like any other.
* :class:`Excluded`: the output dataset of the build (and its staging areas, see
  :mod:`~shardclaim.dataset.output`) is never a task of itself, however the globs cover it.
"""

from __future__ import annotations

import fnmatch
import glob
import itertools
import os
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

from shardclaim.errors import InputError
from shardclaim.store.base import RESERVED_PREFIX

__all__ = ["WILDCARDS", "Excluded", "double_star", "fixed_part", "has_double_star", "remote"]

WILDCARDS = "*?["


def fixed_part(path: str) -> str:
    """The directories of ``path`` before its first wildcard (the parent of a plain file)."""
    parts = path.split("/")
    fixed = list(itertools.takewhile(lambda p: not any(c in p for c in WILDCARDS), parts))
    if len(fixed) == len(parts):
        fixed = fixed[:-1]
    return "/".join(fixed) or "/"


def remote(pattern: str, excluded: Excluded | None) -> tuple[str, list[tuple[str, int, object]]]:
    """The objects matching ``pattern`` (a URL) as for :func:`~shardclaim.dataset.tasks.list_files`:
    the fixed part and each object's ``(path relative to it, size, URL)``."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(pattern)
    root = fixed_part(path).rstrip("/")
    try:
        pattern_given = any(c in path for c in WILDCARDS)
        infos = fs.glob(path, detail=True) if pattern_given else {path: fs.info(path)}
    except FileNotFoundError:
        raise InputError(f"input file not found: {pattern}", pattern) from None
    found: list[tuple[str, int, object]] = []
    for name, info in sorted(infos.items()):
        if info.get("type") != "file":
            continue
        url = str(fs.unstrip_protocol(name))
        if excluded is not None and excluded.remote(url):
            continue
        found.append((name[len(root) + 1 :], int(info.get("size") or 0), url))
    return str(fs.unstrip_protocol(root)), found


def has_double_star(path: str) -> bool:
    return "**" in path.split("/")


def double_star(root: str, pattern: str) -> list[str]:
    """The paths matching ``pattern`` (absolute, normalised), whose part before the first wildcard is
    the directory ``root``; ``**`` as the module says."""
    rest = pattern[len(root) :].strip("/").split("/")
    found = [root]
    for i, part in enumerate(rest):
        last = i == len(rest) - 1
        step: list[str] = []
        for directory in found:
            if part == "**":
                step.extend(_below(directory, entries=last))
            elif glob.has_magic(part):
                step.extend(_matching(directory, part, dirs_only=not last))
            else:
                path = os.path.join(directory, part)
                if os.path.lexists(path) if last else os.path.isdir(path):
                    step.append(path)
        found = step
    return found


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _scan(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError:  # gone, not a directory, unreadable: no match there, as for glob
        return []


def _matching(directory: str, part: str, *, dirs_only: bool) -> Iterator[str]:
    for entry in _scan(directory):
        if _hidden(entry.name) and not _hidden(part):
            continue
        if fnmatch.fnmatchcase(entry.name, part) and (not dirs_only or _is_dir(entry, follow=True)):
            yield entry.path


def _is_dir(entry: os.DirEntry[str], *, follow: bool) -> bool:
    try:
        return entry.is_dir(follow_symlinks=follow)
    except OSError:
        return False


def _below(top: str, *, entries: bool) -> Iterator[str]:
    """``top`` and every real directory below it, each once (no symbolic link followed, hidden names
    left out); with ``entries``, every other entry below too (files, links)."""
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        yield directory
        for entry in _scan(directory):
            if _hidden(entry.name):
                continue
            if _is_dir(entry, follow=False):
                stack.append(entry.path)
            elif entries:
                yield entry.path


class Excluded:
    """Where the build's output lives: a local directory (resolved) or an object store URL prefix.
    :meth:`local` and :meth:`remote` say whether a task would be one of the dataset's own files."""

    def __init__(self, output_dir: str) -> None:
        text = output_dir.strip()
        self._dir = self._siblings = self._url = ""
        if "://" not in text or text.lower().startswith("file://"):
            path = unquote(urlsplit(text).path) if "://" in text else text
            self._dir = os.path.realpath(os.path.abspath(path))
            parent, name = os.path.split(self._dir)
            # the staging area of a swapped build: PARENT/.DIR.shardclaim-build-ID (output.py)
            self._siblings = os.path.join(parent, f".{name}{RESERVED_PREFIX}-")
        else:
            parts = urlsplit(text)
            scheme = {"gcs": "gs"}.get(parts.scheme.lower(), parts.scheme.lower())
            self._url = f"{scheme}://{parts.netloc}/{parts.path.strip('/')}".rstrip("/")

    def local(self, path: str) -> bool:
        if not self._dir:
            return False
        real = os.path.realpath(path)
        return (
            real == self._dir
            or real.startswith(os.path.join(self._dir, ""))
            or real.startswith(self._siblings)
        )

    def remote(self, url: str) -> bool:
        return bool(self._url) and (url == self._url or url.startswith(self._url + "/"))
