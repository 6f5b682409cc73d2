"""``python -m bench run [--quick] [--only NAME] [--json PATH] [--markdown PATH]``."""

import sys

from bench.run import main

sys.exit(main())
