"""``python -m NerveSegLogic.live.worker``: the segmentation worker process (see ``child.py``)."""

import sys

from .child import main

sys.exit(main())
