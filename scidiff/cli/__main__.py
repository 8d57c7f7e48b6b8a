"""``python -m scidiff.cli``: the same as the ``scidiff`` command."""

import sys

from scidiff.cli import main

sys.exit(main())
