"""``python -m orchestrator.sweep``."""

import sys

from orchestrator.sweep.cli import main

sys.exit(main())
