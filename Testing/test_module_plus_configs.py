"""The PLUS configuration examples serve what NerveSeg connects to by default: an OpenIGTLink server on port 18944
sending IMAGE messages named Image_Reference (PLUS names an image "<Image Name>_<EmbeddedTransformToFrame>"), with
the pixel size in the Image-to-Reference transform. Element and attribute names follow PLUS's documentation
(DeviceClarius, DeviceMicrosoftMediaFoundation, DeviceOpenCVVideo, PlusOpenIGTLinkServer)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from NerveSegLogic.controller import DEFAULT_DEVICE_NAME, DEFAULT_PORT

PLUS = Path(__file__).resolve().parent.parent / "Resources" / "PLUS"
CONFIGS = sorted(PLUS.glob("*.xml"))
DEVICE_TYPES = {"PlusDeviceSet_NerveSeg_Clarius.xml": "Clarius",
                "PlusDeviceSet_NerveSeg_VideoGrabber_MediaFoundation.xml": "MmfVideo",
                "PlusDeviceSet_NerveSeg_VideoGrabber_OpenCV.xml": "OpenCVVideo"}


def test_the_clarius_and_video_grabber_examples_are_there():
    assert [p.name for p in CONFIGS] == sorted(DEVICE_TYPES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_serves_image_reference_on_port_18944_with_pixel_spacing(path):
    root = ET.parse(path).getroot()
    assert root.tag == "PlusConfiguration"
    collection = root.find("DataCollection")
    assert collection.find("DeviceSet").get("Name")
    devices = collection.findall("Device")
    assert [d.get("Type") for d in devices] == [DEVICE_TYPES[path.name]]
    device = devices[0]
    sources = device.find("DataSources").findall("DataSource")
    assert len(sources) == 1 and sources[0].get("Type") == "Video" and sources[0].get("PortUsImageOrientation")
    channels = {c.get("Id"): c for c in device.find("OutputChannels").findall("OutputChannel")}
    assert all(c.get("VideoDataSourceId") == sources[0].get("Id") for c in channels.values())

    servers = root.findall("PlusOpenIGTLinkServer")
    assert len(servers) == 1
    server = servers[0]
    assert int(server.get("ListeningPort")) == DEFAULT_PORT
    assert server.get("OutputChannelId") in channels, "the server must send an output channel of the device"
    client = server.find("DefaultClientInfo")
    assert [m.get("Type") for m in client.find("MessageTypes")] == ["IMAGE"]
    images = client.find("ImageNames").findall("Image")
    assert [f"{i.get('Name')}_{i.get('EmbeddedTransformToFrame')}" for i in images] == [DEFAULT_DEVICE_NAME]

    transforms = {(t.get("From"), t.get("To")): t for t in root.find("CoordinateDefinitions").findall("Transform")}
    matrix = np.array(transforms[("Image", "Reference")].get("Matrix").split(), dtype=float).reshape(4, 4)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    assert np.all(spacing > 0.01) and np.all(spacing < 2.0), f"pixel size {spacing} mm is not an ultrasound pixel"
    assert np.allclose(matrix[3], [0, 0, 0, 1])


@pytest.mark.parametrize("name", ["PlusDeviceSet_NerveSeg_VideoGrabber_MediaFoundation.xml",
                                  "PlusDeviceSet_NerveSeg_VideoGrabber_OpenCV.xml"])
def test_video_grabbers_crop_the_scanner_screen_to_the_image_in_grey(name):
    source = ET.parse(PLUS / name).getroot().find("DataCollection/Device/DataSources/DataSource")
    assert source.get("ImageType") == "BRIGHTNESS"
    origin = [int(v) for v in source.get("ClipRectangleOrigin").split()]
    size = [int(v) for v in source.get("ClipRectangleSize").split()]
    assert len(origin) == len(size) == 3 and min(size) > 0
