"""Gaze sources other than a live device: a Pupil Cloud export replayed, and the mouse.

Pupil Cloud's "Timeseries Data" export (one folder per recording) holds:
- gaze.csv: `timestamp [ns]`, `gaze x [px]`, `gaze y [px]` (scene camera px), `worn` (1/0 or
  True/False), `blink id` (empty outside blinks), ...
- fixations.csv: `fixation id`, `start timestamp [ns]`, `end timestamp [ns]`, `fixation x [px]`, `fixation y [px]`
- blinks.csv: `blink id`, `start timestamp [ns]`, `end timestamp [ns]`
- world_timestamps.csv: `timestamp [ns]` of each scene video frame
- the scene video (`*.mp4`) when exported with it.
`replay()` runs a recording through the same pipeline as a live session: scene frames -> AprilTag
homography (integrations/screen_mapping.GazeMapper) -> slice pixels -> GazeSample (worn / blink /
off-image flags kept), so prompting/gaze.py sees exactly what it would have seen live. Replays are
deterministic: same folder, same viewer, same samples.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from prompting.gaze import Fixation, GazeSample

from .errors import EmptyFileError, UnreadableFileError
from .screen_mapping import GazeMapper

REQUIRED = ("gaze.csv", "world_timestamps.csv")


class RecordingFormatError(UnreadableFileError):
    """A folder that is not (or no longer) a Pupil Cloud timeseries export."""


@dataclass(frozen=True)
class Recording:
    folder: Path
    gaze_t_ns: np.ndarray  # (N,) int64
    gaze_xy: np.ndarray  # (N, 2) float64, scene px
    worn: np.ndarray  # (N,) bool
    in_blink: np.ndarray  # (N,) bool
    fixations: tuple[tuple[int, int, float, float], ...]  # (start ns, end ns, x, y) scene px
    blinks: tuple[tuple[int, int], ...]  # (start ns, end ns)
    world_t_ns: np.ndarray  # (F,) int64
    video: Path | None

    @property
    def t0_ns(self) -> int:
        return int(self.gaze_t_ns[0]) if len(self.gaze_t_ns) else 0

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """(timestamp ns, grey frame) of the scene video, paired with world_timestamps.csv."""
        import cv2

        if self.video is None:
            raise RecordingFormatError(f"{self.folder} has no scene video (*.mp4): export it with the scene video "
                                       "to map gaze to the screen, or pass a mapping to replay().")
        cap = cv2.VideoCapture(str(self.video))
        if not cap.isOpened():
            raise RecordingFormatError(f"cannot open the scene video {self.video.name}.")
        try:
            for t in self.world_t_ns:
                ok, frame = cap.read()
                if not ok:
                    break
                yield int(t), cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        finally:
            cap.release()


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise RecordingFormatError(f"{path.parent} is not a Pupil Cloud export: {path.name} is missing.")
    if path.stat().st_size == 0:
        raise EmptyFileError(f"{path} is empty.")
    with path.open(newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _col(rows: list[dict[str, str]], name: str, path: Path) -> list[str]:
    if rows and name not in rows[0]:
        raise RecordingFormatError(f"{path.name} has no column '{name}' (columns: {', '.join(rows[0])}).")
    return [r[name] for r in rows]


def _bool(v: str) -> bool:
    return v.strip().lower() in ("1", "true", "1.0")


def load_recording(folder: str | Path) -> Recording:
    folder = Path(folder)
    if not folder.is_dir():
        raise RecordingFormatError(f"{folder} is not a folder; give the export's recording folder.")
    gp = folder / "gaze.csv"
    g = _rows(gp)
    if not g:
        raise RecordingFormatError(f"{gp} has no gaze samples.")
    try:
        t = np.array([int(float(v)) for v in _col(g, "timestamp [ns]", gp)], dtype=np.int64)
        xy = np.stack([np.array(_col(g, "gaze x [px]", gp), float), np.array(_col(g, "gaze y [px]", gp), float)], 1)
    except ValueError as e:
        raise RecordingFormatError(f"{gp} has a non-numeric timestamp or gaze value ({e}).") from e
    worn = np.array([_bool(v) for v in _col(g, "worn", gp)]) if "worn" in g[0] else np.ones(len(t), bool)
    blink_col = [r.get("blink id", "").strip() for r in g]
    in_blink = np.array([bool(v) for v in blink_col])
    order = np.argsort(t, kind="stable")
    if np.any(order != np.arange(len(t))):
        t, xy, worn, in_blink = t[order], xy[order], worn[order], in_blink[order]
    fixations: tuple = ()
    fp = folder / "fixations.csv"
    if fp.exists() and fp.stat().st_size > 0:
        fr = _rows(fp)
        fixations = tuple((int(float(a)), int(float(b)), float(x), float(y)) for a, b, x, y in zip(
            _col(fr, "start timestamp [ns]", fp), _col(fr, "end timestamp [ns]", fp),
            _col(fr, "fixation x [px]", fp), _col(fr, "fixation y [px]", fp)))
    blinks: tuple = ()
    bp = folder / "blinks.csv"
    if bp.exists() and bp.stat().st_size > 0:
        br = _rows(bp)
        blinks = tuple((int(float(a)), int(float(b))) for a, b in zip(_col(br, "start timestamp [ns]", bp),
                                                                       _col(br, "end timestamp [ns]", bp)))
    for s, e in blinks:  # blinks.csv is authoritative even when gaze.csv lacks `blink id`
        in_blink |= (t >= s) & (t <= e)
    wp = folder / "world_timestamps.csv"
    w_rows = _rows(wp)
    world = np.array([int(float(v)) for v in _col(w_rows, "timestamp [ns]", wp)], dtype=np.int64)
    videos = sorted(folder.glob("*.mp4"))
    return Recording(folder, t, xy, worn, in_blink, fixations, blinks, world, videos[0] if videos else None)


SceneToImage = Callable[[float, float, float], "tuple[float, float] | None"]


def replay(recording: Recording, mapper: GazeMapper | None = None,
           scene_to_image: SceneToImage | None = None) -> list[GazeSample]:
    """Every gaze sample of the recording, in slice pixels, with seconds from the recording start.

    With `mapper`, scene frames are read in time order and each gaze sample is mapped through the
    homography of the latest frame at or before it (as live). `scene_to_image(x, y, t)` replaces it
    when the mapping is known otherwise (e.g. gaze already in screen coordinates).
    """
    if (mapper is None) == (scene_to_image is None):
        raise ValueError("give exactly one of mapper (scene video + markers) or scene_to_image")
    t0 = recording.t0_ns
    ts = (recording.gaze_t_ns - t0) / 1e9
    out: list[GazeSample] = []
    if mapper is not None:
        frames = recording.frames()
        nxt = next(frames, None)
        for i, t in enumerate(ts):
            while nxt is not None and (nxt[0] - t0) / 1e9 <= t:
                mapper.update_frame(nxt[1], (nxt[0] - t0) / 1e9)
                nxt = next(frames, None)
            out.append(_sample(recording, i, float(t), mapper.locate(*recording.gaze_xy[i], float(t))))
    else:
        for i, t in enumerate(ts):
            xy = scene_to_image(*recording.gaze_xy[i], float(t))
            out.append(_sample(recording, i, float(t), None if xy is None else (xy[0], xy[1], True)))
    return out


def _sample(rec: Recording, i: int, t: float, located) -> GazeSample:
    """located: (x, y, on the image) in slice pixels, or None where the screen was not found."""
    if located is None:
        return GazeSample(t, float("nan"), float("nan"), bool(rec.worn[i]), bool(rec.in_blink[i]), False)
    return GazeSample(t, located[0], located[1], bool(rec.worn[i]), bool(rec.in_blink[i]), bool(located[2]))


def recorded_fixations(recording: Recording, mapper: GazeMapper | None = None,
                       scene_to_image: SceneToImage | None = None) -> list[Fixation]:
    """Pupil Cloud's own fixations (fixations.csv), mapped to slice pixels at their mid time (with a
    mapper: through the latest scene frame at or before it, reading the video in time order)."""
    if (mapper is None) == (scene_to_image is None):
        raise ValueError("give exactly one of mapper or scene_to_image")
    t0 = recording.t0_ns
    fx = sorted(recording.fixations, key=lambda f: f[0] + f[1])
    frames = recording.frames() if mapper is not None else iter(())
    nxt = next(frames, None)
    out = []
    for s, e, x, y in fx:
        tm = ((s + e) / 2 - t0) / 1e9
        if mapper is not None:
            while nxt is not None and (nxt[0] - t0) / 1e9 <= tm:
                mapper.update_frame(nxt[1], (nxt[0] - t0) / 1e9)
                nxt = next(frames, None)
            p = mapper.map(x, y, tm)
        else:
            p = scene_to_image(x, y, tm)
        if p is not None:
            out.append(Fixation((s - t0) / 1e9, (e - t0) / 1e9, p[0], p[1], 0, 0.0, "recording"))
    return out


class MouseGaze:
    """The mouse (or a touch) as a gaze source, for demos and users without an eye tracker.

    The app reports pointer positions in slice pixels as they come (`move`); `samples(t_now)` turns the
    sparse pointer track into a steady gaze stream (the pointer held between reports) that the same
    fixation detector reads: resting the pointer is fixating, moving it is a saccade.
    """

    def __init__(self, rate_hz: float = 60.0):
        self.rate_hz = rate_hz
        self._last: tuple[float, float, float] | None = None  # (t, x, y)
        self._emitted_until: float | None = None
        self._pending: list[GazeSample] = []

    def move(self, x: float | None, y: float | None, t: float) -> None:
        """Pointer at (x, y) at time t (seconds); None: the pointer left the image."""
        self._fill(t)
        self._last = (t, float("nan") if x is None else float(x), float("nan") if y is None else float(y))

    def _fill(self, t_now: float) -> None:
        if self._last is None:
            return
        t_last, x, y = self._last
        start = t_last if self._emitted_until is None or self._emitted_until < t_last else self._emitted_until
        step = 1.0 / self.rate_hz
        n = int((t_now - start) / step)
        on = bool(np.isfinite(x) and np.isfinite(y))
        for k in range(n):
            self._pending.append(GazeSample(start + k * step, x, y, True, False, on))
        if n > 0:
            self._emitted_until = start + n * step

    def samples(self, t_now: float) -> list[GazeSample]:
        self._fill(t_now)
        out, self._pending = self._pending, []
        return out
