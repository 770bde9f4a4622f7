"""``python -m rtl_kernels`` is ``rtl-kernels``."""

import sys

from .cli.main import main

sys.exit(main())
