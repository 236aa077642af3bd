"""NerveSegLogic: everything of NerveSeg that is not Qt.

Live ultrasound over OpenIGTLink (``stream``), segmentation models (``models``) run by a background engine
(``inference``), results written to Slicer MRML nodes (``scene``), annotation (``annotate``), data sets
(``datasets``) and training (``train``). Importing this package imports neither torch nor slicer: each
subpackage imports its heavy dependencies where it needs them.
"""

__version__ = "0.1.0"
