"""Annotation correction: turn recorded scans into training data without ever losing an edit.

- ``store``: the append-only SQLite annotation store (frames, masks, versions; conflicts; durability).
- ``importers``: frames from image folders, videos, Slicer sequence files and recordings made by NerveSeg.
- ``corrections``: mask operations (brush, polygon, fill holes, largest component, smooth, ellipse, relabel).
- ``prelabel``: a model's masks (with its name, card sha256 and uncertainty) for every unlabelled frame.
- ``queue``: frames to review, most uncertain first.
- ``agreement``: Dice between annotators on frames labelled twice.
- ``session``: ``ReviewSession``, the controller the Slicer annotation panel binds to.

Importing this package imports none of them (and never torch); import the module you need.
"""
