"""``python -m lorasmith <command> ...`` (what ``accelerate launch -m lorasmith ...`` runs): ``lorasmith.command``."""

import sys

from lorasmith.command import main

sys.exit(main())
