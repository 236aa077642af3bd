"""install: what NerveSeg needs inside 3D Slicer's Python (:mod:`.slicer_packages`), checked without importing it."""
