import sys

from shardclaim.cli import main

sys.exit(main())
