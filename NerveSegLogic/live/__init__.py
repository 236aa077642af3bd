"""live: the live panel's logic without Qt (controller, runs, status, choices, self-test).

Importing it imports neither torch, OpenCV, ONNX Runtime nor ``slicer``: a bare Slicer shows the panel and lists
the models before any optional package is installed.
"""
