"""The optional C accelerators, the one thing pyproject.toml cannot declare (its metadata lives there).

``optional=True``: without a C compiler (or Python's headers) the build warns and goes on, and
``shardclaim.dataset.lineends`` falls back to numpy, ``shardclaim.dataset.records`` to simdjson.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("shardclaim._scan", ["shardclaim/_scan.c"], optional=True),
        Extension("shardclaim._valid", ["shardclaim/_valid.c"], optional=True),
    ]
)
