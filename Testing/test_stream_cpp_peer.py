"""Our receiver against the OpenIGTLink C++ reference implementation: the ImagerServer example of the Debian
package openigtlink-examples, built with cmake against libopenigtlink-dev, sends 256x256 uint8 frames read from raw
files (spacing 1 x 1 x 5 mm, j axis flipped, device "ImagerClient"); we check dimensions, pixel values, spacing and
geometry of what arrives.

The build is cached in build/test-peers/ (ignored by git). Missing packages make this test FAIL with what to run:
`make test` installs them."""

import fcntl
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from NerveSegLogic.stream import ImageReceiver

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "test-peers" / "openigtlink-imager"
PACKAGES = ("libopenigtlink-dev", "openigtlink-examples")
SIZE = 256  # what ImagerServer.cxx sends: 256 x 256 x 1 uint8, spacing (1, 1, 5), matrix diag(1, -1, 1), origin 0
FRAMES = 12
WAIT = 15.0


def _missing(what: str) -> None:
    pytest.fail(f"{what}. This test builds the OpenIGTLink C++ ImagerServer example as a reference peer; run "
                f"`make test`, which installs the Debian packages {' and '.join(PACKAGES)} (or install them with "
                f"apt-get), then run the tests again.", pytrace=False)


def imager_example_dir() -> Path:
    """The ImagerServer example sources, located through dpkg (fails the test when the packages are missing)."""
    if shutil.which("dpkg") is None:
        _missing("dpkg is not available, so the OpenIGTLink packages cannot be located")
    for package in PACKAGES:
        if subprocess.run(["dpkg", "-s", package], capture_output=True).returncode != 0:
            _missing(f"Debian package {package} is not installed")
    listing = subprocess.run(["dpkg", "-L", "openigtlink-examples"], capture_output=True, text=True).stdout.split()
    sources = [Path(p) for p in listing if p.endswith("/Imager/ImagerServer.cxx")]
    if not sources:
        _missing("openigtlink-examples has no Imager/ImagerServer.cxx")
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            _missing(f"{tool} is not on PATH")
    return sources[0].parent


def build_imager_server() -> Path:
    """Configure and build ImagerServer (cached; cmake rebuilds only what changed). Returns the executable."""
    source = imager_example_dir()
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD.parent / ".lock", "w") as lock:  # parallel test runs build once
        fcntl.flock(lock, fcntl.LOCK_EX)
        for command in (["cmake", "-S", str(source), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release"],
                        ["cmake", "--build", str(BUILD), "--target", "ImagerServer", "-j", "2"]):
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                pytest.fail(f"building the OpenIGTLink ImagerServer example failed: {' '.join(command)}\n"
                            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}", pytrace=False)
    executable = BUILD / "ImagerServer"
    assert executable.is_file(), f"cmake reported success but {executable} is missing"
    return executable


def test_patterns(count=5):
    """Five 256x256 images that differ everywhere, as the raw files ImagerServer reads (igtlTestImage1..5.raw)."""
    j, i = np.mgrid[0:SIZE, 0:SIZE]
    return [((i + 3 * j + 41 * n) % 256).astype(np.uint8) for n in range(count)]


test_patterns.__test__ = False  # a helper, not a test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_frames_from_the_openigtlink_cpp_imager_server_arrive_with_its_size_pixels_and_spacing(tmp_path):
    executable = build_imager_server()
    patterns = test_patterns()
    for n, image in enumerate(patterns, start=1):
        (tmp_path / f"igtlTestImage{n}.raw").write_bytes(image.tobytes())  # i fastest, as the example reads it

    frames = []
    for _attempt in range(3):  # the port is picked free, but another process could take it first
        port = free_port()
        log = open(tmp_path / "imager.log", "w")
        server = subprocess.Popen([str(executable), str(port), "50", str(tmp_path)], stdout=log,
                                  stderr=subprocess.STDOUT)
        receiver = ImageReceiver(port=port, on_frame=frames.append, reconnect_min_s=0.02, reconnect_max_s=0.2)
        receiver.start()
        try:
            received = receiver.wait_for(lambda s: s.frames >= FRAMES or server.poll() is not None, WAIT)
        finally:
            receiver.stop()
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
            log.close()
        if len(frames) >= FRAMES:
            break
        frames.clear()
    output = (tmp_path / "imager.log").read_text(errors="replace")
    assert received and len(frames) >= FRAMES, f"got {len(frames)} frames from ImagerServer; its output:\n{output}"

    stats = receiver.stats()
    assert stats.crc_errors == 0 and stats.refused == {} and stats.truncated == 0
    for index, frame in enumerate(frames[:FRAMES]):
        assert frame.device_name == "ImagerClient"
        assert frame.image.shape == (SIZE, SIZE) and frame.image.dtype == np.uint8
        np.testing.assert_array_equal(frame.image, patterns[index % 5], err_msg=f"frame {index}")
        assert frame.geometry.spacing == pytest.approx((1.0, 1.0, 5.0))
        np.testing.assert_allclose(frame.geometry.direction_matrix(), np.diag([1.0, -1.0, 1.0]), atol=1e-6)
        # The C++ matrix puts the image centre at 0: pixel 0 is half an extent away, j axis pointing to -A.
        np.testing.assert_allclose(frame.geometry.origin, (-127.5, 127.5, 0.0), atol=1e-4)
