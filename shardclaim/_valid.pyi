"""Which lines are certainly records, decided in C (``shardclaim/_valid.c``; optional: see
:mod:`shardclaim.dataset.records`)."""

def first_unsure(data: bytes | bytearray | memoryview, a: int, b: int, /) -> int:
    """Where the first line of ``data[a:b]`` neither blank nor certainly a record begins, or ``b``.
    ``data`` must not change during the call (see ``shardclaim/_valid.c``)."""

def utf8_simd(on: object, /) -> bool:
    """Check UTF-8 16 bytes a step (SSSE3) if ``on`` and the CPU can, else one sequence a step; whether
    it now does. For tests: both ways must decide alike."""
