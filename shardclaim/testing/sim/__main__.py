"""``python -m shardclaim.testing.sim``: run seeded schedules (see the package docstring)."""

import sys

from shardclaim.testing.sim import main

sys.exit(main())
