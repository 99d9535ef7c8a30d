"""shardclaim.crc: crc32c's C function without the package's start-up."""

from __future__ import annotations

import random
import subprocess
import sys


def test_crc32c_is_the_packages_function_without_its_package_s_start_up() -> None:
    """shardclaim.crc loads crc32c's C function without the package's __init__ (which reads the
    distribution's metadata on every start): the same values, and the package is not imported."""
    import crc32c as package

    from shardclaim.crc import crc32c

    rnd = random.Random(3)
    for size in (0, 1, 7, 64, 4096, 100_000):
        data = rnd.randbytes(size)
        assert crc32c(data) == package.crc32c(data)
        assert crc32c(data, value=0xDEADBEEF) == package.crc32c(data, value=0xDEADBEEF)
        assert crc32c(memoryview(bytearray(data))) == package.crc32c(data)
    script = "import sys; from shardclaim.crc import crc32c; crc32c(b'x'); print('crc32c' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "False"
