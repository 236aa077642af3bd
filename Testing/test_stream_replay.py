"""Replay server -> ImageReceiver over real loopback sockets, from every kind of source: image folders, video files,
Slicer sequence files and the bundled sample. Frame count, pixel values, spacing, device name, timestamps."""

import json
import time

import cv2
import numpy as np
import pytest

from NerveSegLogic.frame import ImageGeometry
from NerveSegLogic.imaging.placement import to_grey
from NerveSegLogic.resources import sample_dir
from NerveSegLogic.stream import ImageReceiver, ReplayServer
from NerveSegLogic.stream.sources import ImageFolderSource, SequenceFileSource, SourceFrame, open_source

WAIT = 10.0


def replay_and_receive(source, count, **server_kwargs):
    """Serve ``source`` to one receiver, waiting for the client first; returns (frames, server, receiver stats)."""
    frames = []
    server_kwargs.setdefault("fps", 200)
    server = ReplayServer(source, wait_for_client=True, **server_kwargs)
    server.start()
    receiver = ImageReceiver(port=server.port, on_frame=frames.append, reconnect_min_s=0.01, reconnect_max_s=0.05)
    receiver.start()
    try:
        assert server.wait_done(WAIT), "replay did not finish"
        assert server.error is None
        assert receiver.wait_for_frames(count, WAIT), f"received {len(frames)} of {count} frames"
    finally:
        receiver.stop()
        server.stop()
    return frames, server, receiver.stats()


def write_pngs(folder, count, shape=(30, 40), rgb=False):
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(count):
        grey = ((np.arange(shape[0] * shape[1]).reshape(shape) + 17 * index) % 251).astype(np.uint8)
        if rgb:
            image = np.stack([grey, 255 - grey, (grey // 2)], axis=-1)  # RGB
            cv2.imwrite(str(folder / f"frame_{index:03d}.png"), image[:, :, ::-1])  # OpenCV writes BGR
        else:
            image = grey
            cv2.imwrite(str(folder / f"frame_{index:03d}.png"), image)
        images.append(image)
    return images


def test_image_folder_frames_arrive_complete_in_order_with_spacing_device_and_monotonic_timestamps(tmp_path):
    expected = write_pngs(tmp_path / "frames", 6)
    frames, server, stats = replay_and_receive(tmp_path / "frames", 6, spacing_mm=0.25)
    assert server.frames_sent == 6 and stats.frames == 6 and stats.crc_errors == 0
    for frame, image in zip(frames, expected):
        np.testing.assert_array_equal(frame.image, image)
        assert frame.device_name == "Image_Reference"
        assert frame.geometry.spacing == pytest.approx((0.25, 0.25, 1.0), rel=1e-6)
        assert "received" in frame.timestamps and frame.received_wall >= frame.igtl_timestamp > 0
    sent = [f.igtl_timestamp for f in frames]
    received = [f.timestamps["received"] for f in frames]
    assert sent == sorted(sent) and len(set(sent)) == len(sent)
    assert received == sorted(received)
    assert [f.frame_id for f in frames] == [1, 2, 3, 4, 5, 6]


def test_rgb_frames_can_be_sent_as_three_components_and_arrive_grey(tmp_path):
    expected = write_pngs(tmp_path / "rgb", 3, rgb=True)
    frames, _, _ = replay_and_receive(tmp_path / "rgb", 3, spacing_mm=0.1, color="rgb")
    for frame, rgb in zip(frames, expected):
        np.testing.assert_array_equal(frame.image, to_grey(rgb))
    frames_grey, _, _ = replay_and_receive(tmp_path / "rgb", 3, spacing_mm=0.1, color="grey")
    for frame, rgb in zip(frames_grey, expected):
        np.testing.assert_array_equal(frame.image, to_grey(rgb))


def test_bundled_sample_replays_with_the_spacing_of_its_sample_json():
    description = json.loads((sample_dir() / "sample.json").read_text())
    frames, server, _ = replay_and_receive(None, 3, max_frames=3, fps=None)  # None: the sample's own rate
    assert server.frames_sent == 3
    first = cv2.imread(str(sorted((sample_dir() / description["images"]).glob("*.png"))[0]), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(frames[0].image, to_grey(first[:, :, ::-1]))
    assert frames[0].geometry.spacing == pytest.approx(tuple(description["spacing_mm"]), rel=1e-6)
    assert server.fps == description["fps"]


def test_looping_repeats_the_source_until_max_frames(tmp_path):
    expected = write_pngs(tmp_path / "frames", 3)
    frames, server, _ = replay_and_receive(tmp_path / "frames", 7, spacing_mm=1.0, loop=True, max_frames=7)
    assert server.frames_sent == 7
    for index, frame in enumerate(frames):
        np.testing.assert_array_equal(frame.image, expected[index % 3])


def test_video_file_frames_arrive_with_the_video_rate(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 20.0, (64, 48))  # lossless codec
    assert writer.isOpened(), "OpenCV cannot write FFV1 video here"
    for index in range(5):
        writer.write(np.full((48, 64, 3), 40 * index, np.uint8))
    writer.release()
    source = open_source(path, spacing_mm=0.3)
    assert source.fps == pytest.approx(20.0) and len(source) == 5
    frames, _, _ = replay_and_receive(source, 5)
    assert [int(f.image[10, 10]) for f in frames] == [0, 40, 80, 120, 160]
    assert frames[0].image.shape == (48, 64)
    assert frames[0].geometry.spacing == pytest.approx((0.3, 0.3, 1.0), rel=1e-6)


def write_slicer_sequence(path, images, spacing, origin, seconds_per_frame):
    """A volume sequence written by Slicer's own MRML storage node (slicer-core), as Slicer saves recordings."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    scene = slicer.vtkMRMLScene()
    sequence = slicer.vtkMRMLSequenceNode()
    scene.AddNode(sequence)
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("s")
    for index, image in enumerate(images):
        volume = slicer.vtkMRMLScalarVolumeNode()
        data = vtk.vtkImageData()
        data.SetDimensions(image.shape[1], image.shape[0], 1)
        data.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(data.GetPointData().GetScalars())[:] = image.ravel()
        volume.SetAndObserveImageData(data)
        volume.SetSpacing(*spacing)
        volume.SetOrigin(*origin)
        sequence.SetDataNodeAtValue(volume, f"{index * seconds_per_frame:g}")
    storage = slicer.vtkMRMLVolumeSequenceStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.WriteData(sequence), f"Slicer could not write {path}"


def test_slicer_sequence_file_replays_with_the_spacing_origin_and_rate_of_its_header(tmp_path):
    images = [((np.arange(12 * 20).reshape(12, 20) * 3 + 50 * k) % 256).astype(np.uint8) for k in range(4)]
    path = tmp_path / "recording.seq.nrrd"
    write_slicer_sequence(path, images, spacing=(0.2, 0.3, 1.0), origin=(10.0, -20.0, 30.0), seconds_per_frame=0.04)
    source = SequenceFileSource(path)
    assert len(source) == 4 and source.fps == pytest.approx(25.0)
    frames, server, _ = replay_and_receive(path, 4, fps=None)  # None: the recording's own rate
    assert server.fps == pytest.approx(25.0)
    for frame, image in zip(frames, images):
        np.testing.assert_array_equal(frame.image, image)
        # Slicer's volume node geometry (RAS): spacing, origin = centre of pixel 0, identity directions.
        assert frame.geometry.spacing == pytest.approx((0.2, 0.3, 1.0), rel=1e-6)
        np.testing.assert_allclose(frame.geometry.origin, (10.0, -20.0, 30.0), atol=1e-4)
        np.testing.assert_allclose(frame.geometry.direction_matrix(), np.eye(3), atol=1e-6)


def test_plain_3d_nrrd_is_read_as_frames_along_its_last_axis(tmp_path):
    import nrrd

    frames_kji = np.stack([np.full((5, 7), 10 * k, np.uint16) for k in range(3)])  # (t, j, i)
    path = tmp_path / "cine.nrrd"
    nrrd.write(str(path), np.transpose(frames_kji, (2, 1, 0)),
               {"space": "left-posterior-superior", "space directions": np.diag([0.5, 0.5, 1.0]),
                "space origin": np.array([1.0, 2.0, 3.0])}, index_order="F")
    source = SequenceFileSource(path)
    items = list(source)
    assert len(items) == 3 and items[2].image.shape == (5, 7) and int(items[2].image[0, 0]) == 20
    # LPS in the file -> RAS in NerveSeg.
    np.testing.assert_allclose(items[0].geometry.origin, (-1.0, -2.0, 3.0))
    np.testing.assert_allclose(items[0].geometry.direction_matrix()[:, 0], (-1.0, 0.0, 0.0))


def test_sequence_with_the_list_axis_first_and_oblique_lps_axes_is_read(tmp_path):
    import nrrd

    frames_tji = np.stack([np.arange(6 * 4, dtype=np.uint8).reshape(6, 4) + 30 * t for t in range(5)])
    data = np.transpose(frames_tji, (0, 2, 1))[..., np.newaxis]  # file axes: list, i, j, k (size 1)
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    directions = np.array([[np.nan] * 3, [0.2 * c, 0.2 * s, 0.0], [-0.3 * s, 0.3 * c, 0.0], [0.0, 0.0, 2.0]])
    path = tmp_path / "oblique.seq.nrrd"
    nrrd.write(str(path), data, {"kinds": ["list", "domain", "domain", "domain"], "space": "left-posterior-superior",
                                 "space directions": directions, "space origin": np.array([5.0, 6.0, 7.0]),
                                 "units": ["ms", "", "", ""], "axis 0 index values": "0 50 100 150 200"},
               index_order="F")
    source = SequenceFileSource(path)
    items = list(source)
    assert len(items) == 5 and source.fps == pytest.approx(20.0)  # 50 ms apart
    np.testing.assert_array_equal(items[3].image, frames_tji[3])
    geometry = items[0].geometry
    assert geometry.spacing == pytest.approx((0.2, 0.3, 2.0))
    np.testing.assert_allclose(geometry.origin, (-5.0, -6.0, 7.0))
    np.testing.assert_allclose(geometry.direction_matrix()[:, 0], (-c, -s, 0.0), atol=1e-12)
    np.testing.assert_allclose(geometry.direction_matrix()[:, 1], (s, -c, 0.0), atol=1e-12)


def test_sources_that_cannot_be_read_fail_with_the_path_in_the_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        open_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolderSource(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt"):
        open_source(tmp_path / "notes.txt")
    volume = tmp_path / "volume.nrrd"
    import nrrd

    nrrd.write(str(volume), np.zeros((4, 5, 6, 2), np.uint8),
               {"kinds": ["domain", "domain", "domain", "list"]}, index_order="F")
    with pytest.raises(ValueError, match="2D frame"):
        SequenceFileSource(volume)


def test_replay_server_start_and_stop_are_idempotent_and_restart_replays_from_the_first_frame(tmp_path):
    expected = write_pngs(tmp_path / "frames", 2)
    server = ReplayServer(tmp_path / "frames", spacing_mm=1.0, fps=200, wait_for_client=True)
    for _ in range(2):
        frames = []
        server.start()
        server.start()
        receiver = ImageReceiver(port=server.port, on_frame=frames.append, reconnect_min_s=0.01)
        receiver.start()
        try:
            assert server.wait_done(WAIT) and receiver.wait_for_frames(2, WAIT)
        finally:
            receiver.stop()
            server.stop()
            server.stop()
        assert not server.running and server.frames_sent == 2
        np.testing.assert_array_equal(frames[0].image, expected[0])


class SlowSource:
    """A recording whose every frame takes 10 ms to read (a slow disk or decoder)."""

    description = "slow source"
    fps = None

    def __len__(self):
        return 12

    def __iter__(self):
        for index in range(12):
            time.sleep(0.010)  # simulated read time, not synchronisation
            yield SourceFrame(np.full((8, 8), index, np.uint8), ImageGeometry(), f"slow#{index}")


def test_pacing_follows_an_absolute_schedule_so_read_time_does_not_add_up():
    frames, server, _ = replay_and_receive(SlowSource(), 12, fps=50)
    sent = np.array([f.igtl_timestamp for f in frames])
    # Frame n leaves at start + n / 50 s: 20 ms apart although each read takes 10 ms. Sleeping one period after
    # each read would space them 30 ms apart. The median ignores a frame delayed by a busy machine.
    assert np.median(np.diff(sent)) == pytest.approx(0.020, abs=0.004)
    assert sent[-1] - sent[0] >= 11 / 50 - 0.002  # never ahead of the schedule
    assert [int(f.image[0, 0]) for f in frames] == list(range(12))
