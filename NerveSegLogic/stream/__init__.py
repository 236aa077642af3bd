"""OpenIGTLink in and out: the receiver, the sender that ``nerveseg serve`` uses, and the replay server.

- :mod:`.codec`: messages as bytes (header, CRC-64, IMAGE with geometry, TRANSFORM/STRING/STATUS), no sockets.
- :mod:`.receiver`: :class:`ImageReceiver`, frames from PLUS / a replay server into a newest-frame slot.
- :mod:`.sender`: :class:`ImageSender`, IMAGE messages (labelmaps) out to any number of clients.
- :mod:`.sources` and :mod:`.replay`: recorded frames served at a steady rate by :class:`ReplayServer`.

The default ports and device names are :mod:`NerveSegLogic.igtl`'s (re-exported here).
Nothing here imports torch or slicer; OpenCV is imported only where images are read or made grey.
"""

from NerveSegLogic.stream.codec import (DEFAULT_MAX_BODY_BYTES, Header, IgtlProtocolError, ImageMessage,
                                        ImageRefused, decode_image, encode_image, geometry_to_igtl_matrix,
                                        igtl_matrix_to_geometry, parse_header)
from NerveSegLogic.igtl import DEFAULT_PORT, IMAGE_DEVICE_NAME, LABEL_DEVICE_NAME, SERVE_PORT
from NerveSegLogic.stream.receiver import ImageReceiver, ReceiverStats
from NerveSegLogic.stream.replay import DEFAULT_FPS, ReplayServer
from NerveSegLogic.stream.sender import ImageSender, SenderStats
from NerveSegLogic.stream.sources import open_source, sample_source

__all__ = [
    "DEFAULT_FPS", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_PORT", "IMAGE_DEVICE_NAME", "LABEL_DEVICE_NAME", "SERVE_PORT",
    "Header", "IgtlProtocolError", "ImageMessage", "ImageReceiver", "ImageRefused", "ImageSender", "ReceiverStats",
    "ReplayServer", "SenderStats", "decode_image", "encode_image", "geometry_to_igtl_matrix",
    "igtl_matrix_to_geometry", "open_source", "parse_header", "sample_source",
]
