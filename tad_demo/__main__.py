"""``python -m tad_demo`` — see tad_demo/cli.py."""

import sys

from .cli import main

sys.exit(main())
