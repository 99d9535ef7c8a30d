"""``python -m shardclaim``: the ``shardclaim`` command line (:mod:`shardclaim.cli`)."""

import sys

from shardclaim.cli import main

sys.exit(main())
