"""Line ends and blank lines of a block, walked in C (``shardclaim/_scan.c``; optional: see
:mod:`shardclaim.dataset.lineends`)."""

def count_and_blanks(
    data: bytes | bytearray | memoryview, a: int, b: int
) -> tuple[int, list[tuple[int, int]]]: ...
def plan_runs(
    data: bytes | bytearray | memoryview, start: int, end: int, share: int
) -> tuple[list[tuple[int, int]], list[int]]: ...
