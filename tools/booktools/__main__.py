"""``python -m booktools tangle|chapter ...`` (see booktools.cli)."""

import sys

from booktools.cli import main

sys.exit(main())
