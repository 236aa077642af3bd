"""testing: what the tests (Testing/) and the benchmarks (benchmarks/) share, like Slicer's own ``slicer.testing``.
Nothing in the product imports it.

- :mod:`.slicerlike`: a scene with Slicer's Sequences logic and a driver that holds the GIL between ticks as
  Slicer's main thread does (Testing/slicerlike.py builds the tests' fixtures on it);
- :mod:`.sample_feed`: the bundled sample sent over OpenIGTLink at a rate, and what was sent;
- :mod:`.igtl_fuzz`: malformed OpenIGTLink messages and a server that sends them;
- :mod:`.killed_children`: the saving and exporting children the kill tests and loops kill;
- :mod:`.postgres`: a throwaway PostgreSQL cluster started as an unprivileged user;
- :mod:`.moving_sequence`: synthetic moving sequences made from labelled frames;
- :mod:`.machine`: the machine line of a benchmark report (CPU, load).
"""
