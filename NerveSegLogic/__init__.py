"""NerveSegLogic: everything of NerveSeg that is not Qt.

Live ultrasound over OpenIGTLink (``stream``), segmentation models (``models``) run by a background engine
(``inference``), results written to Slicer MRML nodes (``scene``), annotation (``annotate``), data sets
(``datasets``) and training (``train``). Importing this package imports neither torch nor slicer: each
subpackage imports its heavy dependencies where it needs them.
"""

import os as _os

__version__ = "0.1.0"

# OpenMP worker threads that spin while waiting steal the cores that the receiver and main threads need: on a
# 2-core machine that made inference several times slower (benchmarks/speed/models.md). Set before any NerveSeg code
# loads torch (command line, Slicer module, tests); a value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
