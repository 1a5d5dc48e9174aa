"""`python -m neuroforge_lit tangle` (same as the `neuroforge-lit` command). Hand-written."""

import sys

from neuroforge_lit.cli import main

sys.exit(main())
