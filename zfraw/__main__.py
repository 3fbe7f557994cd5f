"""``python -m zfraw ...`` is the ``zfraw`` command."""
import sys

from zfraw.cli import main

sys.exit(main())
