"""The PLUS configuration examples serve what NerveSeg connects to by default: an OpenIGTLink server on port 18944
sending IMAGE messages named Image_Reference (PLUS names an image "<Image Name>_<EmbeddedTransformToFrame>"), with
the pixel size in the Image-to-Reference transform. Element and attribute names follow PLUS's documentation
(DeviceClarius, DeviceMicrosoftMediaFoundation, DeviceOpenCVVideo, PlusOpenIGTLinkServer).

What the comments claim follows PLUS's source (PlusToolkit/PlusLib): MmfVideo converts to grey when ImageType is
BRIGHTNESS (vtkPlusMmfVideoSource::AddFrame), OpenCVVideo always stores RGB_COLOR frames
(vtkPlusOpenCVCaptureVideoSource::InternalUpdate), and "Clarius" is registered only in builds with
PLUS_USE_CLARIUS (vtkPlusDeviceFactory), which no released PLUS (2.8.0) is: only 2.9.0 development snapshots."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from NerveSegLogic.igtl import DEFAULT_PORT, IMAGE_DEVICE_NAME
from NerveSegLogic.stream.codec import FRAME_COMPONENTS

REPO = Path(__file__).resolve().parent.parent
PLUS = REPO / "Resources" / "PLUS"
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
    assert [f"{i.get('Name')}_{i.get('EmbeddedTransformToFrame')}" for i in images] == [IMAGE_DEVICE_NAME]

    transforms = {(t.get("From"), t.get("To")): t for t in root.find("CoordinateDefinitions").findall("Transform")}
    matrix = np.array(transforms[("Image", "Reference")].get("Matrix").split(), dtype=float).reshape(4, 4)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    assert np.all(spacing > 0.01) and np.all(spacing < 2.0), f"pixel size {spacing} mm is not an ultrasound pixel"
    assert np.allclose(matrix[3], [0, 0, 0, 1])


# What PLUS sends from each video grabber: MmfVideo honours ImageType and converts to grey; OpenCVVideo sets
# RGB_COLOR itself whatever the configuration says, so the configuration says RGB_COLOR too.
GRABBER_IMAGE_TYPES = {"PlusDeviceSet_NerveSeg_VideoGrabber_MediaFoundation.xml": "BRIGHTNESS",
                       "PlusDeviceSet_NerveSeg_VideoGrabber_OpenCV.xml": "RGB_COLOR"}


@pytest.mark.parametrize("name", sorted(GRABBER_IMAGE_TYPES))
def test_video_grabbers_crop_the_scanner_screen_to_the_image_in_the_type_plus_sends(name):
    source = ET.parse(PLUS / name).getroot().find("DataCollection/Device/DataSources/DataSource")
    assert source.get("ImageType") == GRABBER_IMAGE_TYPES[name], \
        f"{name}: DataSource ImageType is {source.get('ImageType')!r}, expected {GRABBER_IMAGE_TYPES[name]!r}"
    origin = [int(v) for v in source.get("ClipRectangleOrigin").split()]
    size = [int(v) for v in source.get("ClipRectangleSize").split()]
    assert len(origin) == len(size) == 3 and min(size) > 0
    assert 3 in FRAME_COMPONENTS and 1 in FRAME_COMPONENTS, "NerveSeg must take the grey and the RGB grabber images"


def _comment(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return " ".join(text[text.index("<!--"):text.index("-->")].split())


def test_the_opencv_device_set_does_not_claim_grey_images():
    name = "PlusDeviceSet_NerveSeg_VideoGrabber_OpenCV.xml"
    comment = _comment(PLUS / name)
    assert "converts it to grey" not in comment and "RGB" in comment, \
        f"{name}: the comment must say that PLUS sends RGB from OpenCVVideo (not grey)"
    description = ET.parse(PLUS / name).getroot().find("DataCollection/DeviceSet").get("Description")
    assert "grey" not in description.lower(), f"{name}: DeviceSet Description {description!r} claims grey images"


# What each comment must say about the PLUS build that runs it.
PLUS_BUILD_CLAIMS = {
    "PlusDeviceSet_NerveSeg_Clarius.xml": ("PLUS_USE_CLARIUS", "2.8.0", "2.9.0 development snapshot", "Win64",
                                           "Windows 64-bit only", "Unknown device type: Clarius"),
    "PlusDeviceSet_NerveSeg_VideoGrabber_MediaFoundation.xml": ("2.8.0", "no special build"),
    "PlusDeviceSet_NerveSeg_VideoGrabber_OpenCV.xml": ("PLUS_USE_OpenCV_VIDEO", "2.8.0", "2.9.0 development snapshot"),
}


@pytest.mark.parametrize("name", sorted(PLUS_BUILD_CLAIMS))
def test_comment_says_which_plus_build_runs_the_device_set(name):
    comment = _comment(PLUS / name)
    assert "Which PLUS runs it:" in comment, f"{name}: the comment lacks a 'Which PLUS runs it:' paragraph"
    for needle in PLUS_BUILD_CLAIMS[name]:
        assert needle in comment, f"{name}: the comment's 'Which PLUS runs it:' paragraph lacks {needle!r}"


def test_readme_says_which_plus_build_runs_each_device_set():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    heading = "### PLUS versions for the device sets"
    assert heading in readme, f"README.md: no {heading!r} part"
    part = readme[readme.index(heading):]
    part = part[:part.index("\n## ")] if "\n## " in part else part
    for path in CONFIGS:
        assert path.name in part, f"README.md: the PLUS versions part does not name {path.name}"
    for needle in ("2.8.0", "2.9.0", "PLUS_USE_CLARIUS", "Windows 64-bit"):
        assert needle in part, f"README.md: the PLUS versions part lacks {needle!r}"
