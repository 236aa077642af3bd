"""OpenIGTLink in and out: the receiver, the sender that ``nerveseg serve`` uses, and the replay server.

- :mod:`.codec`: messages as bytes (header, CRC-64, IMAGE with geometry, TRANSFORM/STRING/STATUS), no sockets.
- :mod:`.receiver`: :class:`ImageReceiver`, frames from PLUS / a replay server into a newest-frame slot.
- :mod:`.sender`: :class:`ImageSender`, IMAGE messages (labelmaps) out to any number of clients.
- :mod:`.sources` and :mod:`.replay`: recorded frames served at a steady rate by :class:`ReplayServer`.

Nothing here imports torch or slicer; OpenCV is imported only where images are read or made grey.
"""

from NerveSegLogic.stream.codec import (DEFAULT_MAX_BODY_BYTES, Header, IgtlProtocolError, ImageMessage,
                                        ImageRefused, decode_image, encode_image, geometry_to_igtl_matrix,
                                        igtl_matrix_to_geometry, parse_header)
from NerveSegLogic.stream.receiver import DEFAULT_PORT, ImageReceiver, ReceiverStats
from NerveSegLogic.stream.replay import DEFAULT_FPS, PLUS_IMAGE_DEVICE, ReplayServer
from NerveSegLogic.stream.sender import LABEL_DEVICE_NAME, ImageSender, SenderStats
from NerveSegLogic.stream.sources import open_source, sample_source

__all__ = [
    "DEFAULT_FPS", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_PORT", "LABEL_DEVICE_NAME", "PLUS_IMAGE_DEVICE",
    "Header", "IgtlProtocolError", "ImageMessage", "ImageReceiver", "ImageRefused", "ImageSender", "ReceiverStats",
    "ReplayServer", "SenderStats", "decode_image", "encode_image", "geometry_to_igtl_matrix",
    "igtl_matrix_to_geometry", "open_source", "parse_header", "sample_source",
]
