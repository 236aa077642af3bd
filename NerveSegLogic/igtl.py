"""The OpenIGTLink ports and device names NerveSeg agrees on with PLUS, Slicer and itself, written once.

Everything that connects, listens or names a device takes its default from here: the stream package (receiver,
sender, replay server, codec), ``nerveseg serve``, ``demo`` and ``replay``, the live panel's logic and
``NerveSeg/NerveSeg.py``. A module of its own at the package's root, importing nothing, so that the Slicer panel and
the registration of a command (which must not import the stream package) read it for free.
"""

#: PLUS's and Slicer's default OpenIGTLink port: where the scanner's images come from.
DEFAULT_PORT = 18944
#: ``nerveseg serve``'s default port: where its labelmaps go out.
SERVE_PORT = 18945
#: PLUS's device name of the B-mode image ("<Image Name>_<EmbeddedTransformToFrame>": "Image" in the "Reference" frame).
IMAGE_DEVICE_NAME = "Image_Reference"
#: Device name of the labelmaps a ``nerveseg serve`` of one stream sends (one of several scanners: ``NAME_Label``).
LABEL_DEVICE_NAME = "NerveSegLabel"
