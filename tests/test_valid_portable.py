"""The C line check's portable build decides exactly as the one installed here.

``shardclaim/_valid.c`` has a 16-bytes-a-step string scan (SSE2) and UTF-8 check (SSSE3) on x86, and plain
C loops everywhere else: an aarch64 host (Grace Hopper, Graviton) builds only the plain loops, which the
installed x86 module never runs. These tests compile ``_valid.c`` once more with ``__SSE2__`` undefined and
``char`` unsigned (as on aarch64), load it beside the installed module, and hold both to the same answer
on the hostile pass's generated lines and on a string scan's every edge.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import random
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from tests.test_valid_hostile import _gen, _mutate, _utf8_cases

_valid = pytest.importorskip("shardclaim._valid", reason="shardclaim._valid is not built (no C compiler?)")
_SOURCE = Path(__file__).resolve().parents[1] / "shardclaim" / "_valid.c"


@pytest.fixture(scope="module")
def portable(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    if shutil.which(cc[0]) is None:
        pytest.skip(f"no C compiler ({cc[0]}) to build the portable check")
    out = tmp_path_factory.mktemp("portable") / ("_valid" + importlib.machinery.EXTENSION_SUFFIXES[0])
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        [*cc, "-O2", "-fPIC", "-shared", "-U__SSE2__", "-funsigned-char", f"-I{include}", str(_SOURCE),
         "-o", str(out)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    spec = importlib.util.spec_from_file_location("_valid", out)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.utf8_simd(True) is False  # no SIMD compiled in: the build is the portable one
    return module


def _same(portable: Any, data: bytes) -> None:
    """Both builds stop at the same line, walking from every line start."""
    pos = 0
    while pos < len(data):
        here = _valid.first_unsure(data, pos, len(data))
        assert portable.first_unsure(data, pos, len(data)) == here, data[pos : pos + 200]
        if here == len(data):
            return
        pos = data.index(b"\n", here) + 1


@pytest.mark.parametrize("seed", range(4))
def test_generated_and_mutated_lines(portable: Any, seed: int) -> None:
    rnd = random.Random(9100 + seed)
    lines: list[bytes] = []
    prev = b""
    for _ in range(1500):
        base = _gen(rnd)
        lines.append(base)
        lines += [_mutate(rnd, base, prev) for _ in range(6)]
        prev = base
    _same(portable, b"\n".join(lines) + b"\n")
    for line in lines[:3000]:  # a line alone, as the inline validator hands it over (no newline)
        assert portable.first_unsure(line, 0, len(line)) == _valid.first_unsure(line, 0, len(line)), line


def test_utf8_sequences_inside_strings(portable: Any) -> None:
    for case in _utf8_cases():
        for pad in range(0, 34, 3):  # the sequence at every place of a 16-byte step
            line = b'{"k":"' + b"a" * pad + case + b"a" * (33 - pad) + b'"}'
            _same(portable, line + b"\n")


_SPECIAL = [b'"', b"\\", b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xc3\xa9", b"\xff", b" "]


@pytest.mark.parametrize("special", _SPECIAL)
def test_a_special_byte_at_every_place_of_a_long_string(portable: Any, special: bytes) -> None:
    """The SSE2 scan looks 16 bytes at a time for control bytes, quotes, backslashes and bytes of 0x80 or
    more: each one at every offset, in strings of every length around the step, is judged alike."""
    lines = []
    for length in range(0, 50):
        for at in range(length + 1):
            s = b"x" * at + special + b"y" * (length - at)
            lines += [b'{"' + s + b'":1}', b'["' + s + b'"]', b'"' + s]
    _same(portable, b"\n".join(lines) + b"\n")
