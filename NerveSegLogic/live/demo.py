"""The demo run behind ``nerveseg demo``: replay server -> receiver -> engine -> MRML scene, then the outputs.

Kept apart from the command so the benchmark and tests drive the same code.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..igtl import IMAGE_DEVICE_NAME
from ..resources import sample_dir
from ..stream.receiver import ImageReceiver
from ..stream.replay import ReplayServer
from .pipeline import LivePipeline
from ..inference.backends import describe
from ..inference.segmenter import load_segmenter
from ..models import registry
from ..scene import LiveScene

log = logging.getLogger(__name__)

#: After the replay server has sent its last frame, how long to wait for the pipeline to drain (s).
DRAIN_TIMEOUT_S = 30.0
#: How many single overlay PNGs to keep (evenly spread over the run); the video has every applied frame.
OVERLAY_PICTURES = 8


@dataclass
class DemoOptions:
    out: str = "nerveseg-demo"
    frames: int = 48
    fps: float = 25.0
    model: Optional[str] = None
    backend: str = "auto"  # ONNX Runtime on the CPU for semantic models, else torch
    device: str = "cpu"
    threads: Optional[int] = None  # intra-op threads of ONNX Runtime and torch; None: the backend's default
    source: Optional[str] = None
    video: bool = True
    port: int = 0  # 0: an ephemeral port, so two demos never collide
    quiet: bool = False
    #: the image region the model sees: None (whole frame), an inference.region.Region, "X,Y,W,H" or "auto"
    region: object = None
    #: the steady overlay (inference.steady): on (the default, as the live panel) or off (each frame on its own)
    steady: bool = True


@dataclass
class _Kept:
    """What the overlay sink keeps of each applied result (references, no copies: frames are not reused)."""

    items: List[tuple] = field(default_factory=list)
    confidence: List[tuple] = field(default_factory=list)  # (presence, states) of each applied result

    def __call__(self, result) -> None:
        self.items.append((result.frame_id, result.frame.image, result.labelmap))
        self.confidence.append((result.presence, result.states))


def run_demo(options: DemoOptions) -> dict:
    """Run the demo; returns the summary (also written to ``<out>/summary.json``)."""
    out = Path(options.out).resolve()  # the scene saver returns absolute paths; summary paths are relative to out
    out.mkdir(parents=True, exist_ok=True)
    model_name = options.model or registry.default_name()
    say = (lambda *a: None) if options.quiet else print

    say(f"loading model {model_name} ...")
    segmenter = load_segmenter(model_name, backend=options.backend, device=options.device, threads=options.threads)
    if options.region is not None:
        segmenter.region = options.region
    source = Path(options.source) if options.source else sample_dir()
    replay = ReplayServer(source, host="127.0.0.1", port=options.port, fps=options.fps, loop=True,
                          max_frames=options.frames, wait_for_client=True)
    segmenter.warm_up()

    scene = LiveScene(segmenter.classes, record=True)
    scene.set_model_identity(segmenter.card.name, segmenter.card_sha256)
    kept = _Kept()
    replay.start()
    receiver = ImageReceiver("127.0.0.1", replay.port, device_name=IMAGE_DEVICE_NAME)
    pipeline = LivePipeline(receiver, segmenter, sinks=[scene.apply, kept])
    pipeline.engine.set_steady(bool(options.steady))  # one stream: one filter, inside the segmenter
    say(f"replaying {options.frames} frames from {source} at {options.fps:g} fps on 127.0.0.1:{replay.port}"
        f" (steady overlay {'on' if options.steady else 'off'})")

    started = time.perf_counter()
    interrupted = False
    pipeline.start()
    try:
        deadline = None
        while True:
            pipeline.poll(timeout=0.02)
            if replay.done.is_set():
                deadline = deadline or time.perf_counter() + DRAIN_TIMEOUT_S
                received_all = pipeline.frames.put_count >= replay.frames_sent
                if (received_all and pipeline.all_accounted()) or time.perf_counter() > deadline:
                    break
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: stopping and saving what was recorded")
    finally:
        pipeline.stop()
        replay.stop()
    wall_s = time.perf_counter() - started

    say("saving the scene and overlays ...")
    scene.reset_states()  # every class drawn filled in the saved scene (the live view's last states are gone)
    scene_path = scene.save(out / "scene")
    pictures = _write_overlays(out, kept.items, segmenter.classes, options.video)
    summary = _summary(options, model_name, segmenter, replay, pipeline, scene, scene_path, pictures, wall_s,
                       interrupted)
    summary["steady"] = _steady_summary(options, pipeline.engine)
    summary["confidence"] = _confidence_summary(kept.confidence, segmenter.classes)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if not options.quiet:
        print(format_summary(summary))
    return summary


def _write_overlays(out: Path, items, classes, video: bool) -> dict:
    import cv2

    # The package's own imports inside functions here are lazy on purpose: they load OpenCV, which importing this
    # module must not.
    from ..imaging.overlay import contact_sheet, render_overlay

    folder = out / "overlays"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("frame_*.png"):
        old.unlink()  # a previous run's pictures would mix with this run's
    written = {"pictures": [], "contact_sheet": None, "video": None}
    if not items:
        return written
    rendered = [render_overlay(image, labelmap, classes, caption=f"frame {frame_id}")
                for frame_id, image, labelmap in items]
    chosen = sorted(set(np.linspace(0, len(rendered) - 1, min(OVERLAY_PICTURES, len(rendered))).astype(int)))
    for index in chosen:
        path = folder / f"frame_{items[index][0]:04d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(rendered[index], cv2.COLOR_RGB2BGR))
        written["pictures"].append(str(path.relative_to(out)))
    sheet = out / "overlays.png"
    cv2.imwrite(str(sheet), cv2.cvtColor(contact_sheet([rendered[i] for i in chosen]), cv2.COLOR_RGB2BGR))
    written["contact_sheet"] = sheet.name
    if video:
        written["video"] = _write_video(out / "overlay.mp4", rendered)
    return written


def _write_video(path: Path, pictures, fps: float = 10.0) -> Optional[str]:
    """MP4 (MPEG-4 part 2, which OpenCV's bundled FFmpeg writes everywhere) of same-size pictures."""
    import cv2

    height, width = pictures[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        log.warning("could not open a video writer for %s; no overlay video", path)
        return None
    try:
        for picture in pictures:
            if picture.shape[:2] != (height, width):
                picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
            writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path.name


def describe_backend(backend) -> str:
    return describe(backend)


def _summary(options, model_name, segmenter, replay, pipeline, scene, scene_path, pictures, wall_s,
             interrupted) -> dict:
    counters = pipeline.counters()
    percentiles = pipeline.stats.percentiles()
    latency = {}
    for key, values in percentiles.items():
        latency[key] = {k: round(values[k], 2) for k in ("p50", "p95", "p99", "mean")}
        latency[key]["n"] = values["n"]
    summary = {
        "model": model_name,
        "backend": describe_backend(segmenter.backend),
        "frames_sent": int(replay.frames_sent),
        "frames_received": counters["frames_received"],
        "frames_segmented": counters["frames_segmented"],
        "frames_applied": counters["frames_applied"],
        "frames_dropped": counters["frames_dropped"],
        "frames_dropped_before_inference": counters["frames_dropped_before_inference"],
        "results_dropped_before_apply": counters["results_dropped_before_apply"],
        "inference_errors": counters["inference_errors"],
        "fps": round(pipeline.stats.fps(), 2),
        "replay_fps": options.fps,
        "latency_ms": latency,
        "latency_note": "total = received to applied; receive = sender timestamp to received (same clock); "
                        "wait = in the newest-frame slot; apply = to the main thread, MRML update and recording",
        "scene": str(Path(scene_path).resolve().relative_to(Path(options.out).resolve())) if scene_path else None,
        "recorded_items": int(getattr(scene, "applied_count", counters["frames_applied"])),
        "overlays": pictures,
        "wall_s": round(wall_s, 2),
        "interrupted": interrupted,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }
    if "receiver" in counters:
        summary["receiver"] = counters["receiver"]
    if options.region is not None:
        summary["region"] = _region_summary(segmenter)
    return summary


def _steady_summary(options, engine) -> dict:
    """The steady setting: on or off, its options, and how often the stream started again (cuts noticed)."""
    import dataclasses

    steady = engine.steady
    out = {"on": bool(options.steady)}
    if steady is not None:
        out["options"] = {k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in dataclasses.asdict(steady.options).items()}
        out["restarts"] = int(steady.resets)
    return out


def _confidence_summary(confidence, classes) -> dict:
    """Per class over the applied frames: mean and range of its presence, frames by display state."""
    out = {}
    for c in classes:
        values = [p[c.key] for p, _ in confidence if p and c.key in p]
        states = [s[c.key] for _, s in confidence if s and c.key in s]
        if not values and not states:
            continue
        out[c.key] = {"presence_mean": round(float(np.mean(values)), 3) if values else None,
                      "presence_min": round(float(np.min(values)), 3) if values else None,
                      "presence_max": round(float(np.max(values)), 3) if values else None,
                      "frames": {state: states.count(state) for state in ("shown", "uncertain", "hidden")}}
    return out


def _region_summary(segmenter) -> dict:
    """What ``--region`` did: the region given, or the one found and why (auto)."""
    auto = getattr(segmenter, "auto_region", None)
    if auto is None:
        return {"given": str(segmenter.region)}
    found = auto.region
    return {"given": "auto", "found": found.text() if found is not None else None,
            "why": auto.reason or f"still collecting frames ({auto.frames} so far): whole frames segmented"}


def format_summary(summary: dict) -> str:
    """The table the demo prints."""
    lines = [
        "",
        f"NerveSeg demo: {summary['model']} on {summary['backend']}",
        f"  frames sent {summary['frames_sent']}, received {summary['frames_received']}, "
        f"segmented {summary['frames_segmented']}, applied {summary['frames_applied']}, "
        f"dropped {summary['frames_dropped']} (stale before inference {summary['frames_dropped_before_inference']}, "
        f"before apply {summary['results_dropped_before_apply']})",
        f"  sustained {summary['fps']:.1f} fps (replayed at {summary['replay_fps']:g} fps), "
        f"wall time {summary['wall_s']:.1f} s",
        "",
        f"  {'latency (ms)':<14}{'p50':>9}{'p95':>9}{'p99':>9}",
    ]
    for key in ("total", "receive", "wait", "preprocess", "inference", "postprocess", "apply"):
        values = summary["latency_ms"].get(key)
        if values:
            lines.append(f"  {key:<14}{values['p50']:>9.1f}{values['p95']:>9.1f}{values['p99']:>9.1f}")
    steady = summary.get("steady")
    if steady is not None:
        restarts = steady.get("restarts")
        lines += ["", "  steady overlay: " + ("on" if steady.get("on") else "off (each frame on its own)")
                  + (f", started again {restarts} times (cuts between views)" if steady.get("on") and restarts
                     is not None else "")]
    confidence = summary.get("confidence") or {}
    for key, c in confidence.items():
        frames = c["frames"]
        mean = f"{100 * c['presence_mean']:.0f} %" if c.get("presence_mean") is not None else "-"
        lines.append(f"  {key:<14}presence mean {mean}; drawn in {frames['shown']} frames, outlined (uncertain) in "
                     f"{frames['uncertain']}, not drawn in {frames['hidden']}")
    region = summary.get("region")
    if region:
        shown = region.get("found") or region["given"]
        lines += ["", f"  image region (X,Y,W,H): {shown}" + (f"  ({region['why']})" if region.get("why") else "")]
    overlays = summary["overlays"]
    lines += [
        "",
        f"  scene:    {summary['scene']}  ({summary['recorded_items']} recorded items; open it in 3D Slicer)",
        f"  overlays: {overlays.get('contact_sheet')}, {len(overlays.get('pictures', []))} pictures in overlays/"
        + (f", video {overlays['video']}" if overlays.get("video") else ""),
        "  summary:  summary.json",
        "  Research use only, not for clinical decisions.",
    ]
    return "\n".join(lines)
