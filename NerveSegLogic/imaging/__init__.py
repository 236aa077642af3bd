"""imaging: the ground floor of pixels, which every other part may import and which imports none of them.

- :mod:`.placement`: grey conversion, intensity normalisation, placing a frame into a model's input
  (:class:`~.placement.InputSpec`, :class:`~.placement.Placement`) and restoring maps to the frame, small-region
  removal;
- :mod:`.region`: the image region (the part of the frame the model sees: whole frame, found automatically, drawn);
- :mod:`.bounds`: the largest image NerveSeg accepts; :mod:`.files`: reading and writing image files;
- :mod:`.components`: connected regions of a labelmap (what the panel labels and counts);
- :mod:`.overlay`: drawing labelmaps over frames (PNG pictures);
- :mod:`.overlap`: Dice and IoU of masks, with the one rule for empty masks that every part uses.

Importing this package imports none of them; OpenCV loads only where a function needs it.
"""
