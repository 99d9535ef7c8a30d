"""CRC32C (Castagnoli), the checksum of every chunk: the ``crc32c`` package's C function, loaded without
running the package's ``__init__``.

That ``__init__`` sets ``__version__`` from the installed distribution's metadata, which imports
``importlib.metadata`` (and through it ``email``, ``zipfile``, ``csv``...): 25 ms of the 29 ms the package
cost every command that reads or writes data, out of about 115 ms of imports in a whole build
(``python -X importtime``, a wheel install, 2026-11-30). Its extension module ``crc32c._crc32c`` holds
the function; it is loaded from the package's directory, found without importing the package. Where
that module is not there (another layout of a later release), the package is imported as usual.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from collections.abc import Callable
from typing import Any

__all__ = ["crc32c"]


def _load() -> Callable[..., int]:
    spec = importlib.util.find_spec("crc32c")  # (a top-level package: found, not imported)
    for directory in (spec.submodule_search_locations or []) if spec is not None else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, "_crc32c" + suffix)
            if os.path.isfile(path):
                loader = importlib.machinery.ExtensionFileLoader("crc32c._crc32c", path)
                module_spec = importlib.util.spec_from_loader("crc32c._crc32c", loader)
                if module_spec is None:
                    continue
                module: Any = importlib.util.module_from_spec(module_spec)
                loader.exec_module(module)
                function: Callable[..., int] = module.crc32c
                return function
    import crc32c as package

    fallback: Callable[..., int] = package.crc32c
    return fallback


#: ``crc32c(data, value=0) -> int``: the CRC32C of ``data`` (any buffer), continuing from ``value``.
crc32c = _load()
