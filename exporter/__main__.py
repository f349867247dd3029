"""`python -m exporter` is the `duvo-exporter` command."""

import sys

from exporter.cli import main

sys.exit(main())
