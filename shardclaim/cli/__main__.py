"""``python -m shardclaim.cli``, the same as ``python -m shardclaim`` and ``shardclaim``."""

import sys

from shardclaim.cli import main

sys.exit(main())
