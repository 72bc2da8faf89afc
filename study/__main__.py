"""`python -m study ...` is `raptor-study ...` (for machines where the entry point is not installed)."""

import sys

from study.cli import main

sys.exit(main())
