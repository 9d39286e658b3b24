"""Pupil Labs Neon / Pupil Invisible over the Realtime API: find, connect, stream gaze in the background.

Built on `pupil_labs.realtime_api` (1.9): its async `Device` for status (HTTP `/api/status`, then the
status websocket for battery/sensor updates) and its RTSP streamers for gaze (`receive_gaze_data`) and,
when the Companion app offers them (>= 2.9, the `eye_events` sensor), on-device fixations and blinks
(`receive_eye_events_data`). The async API is used rather than `simple.Device` because the simple one
keeps only the most recent item per sensor (deque of length 1): at 200 Hz gaze a busy UI thread would
silently lose samples, and fixation detection needs all of them.

`GazeStreamWorker` runs an asyncio loop in a daemon thread; the app calls start/pause/resume/stop and
drains samples and events without ever blocking on the network. With `scene_frames=True` it also
receives the scene camera (`receive_video_frames`: RTSP/H.264 decoded by PyAV) and keeps at most
`frame_rate_hz` frames per second for `drain_frames()` (added; the rest of the API is unchanged):
integrations.screen_mapping.SceneGazeMapping / LiveGazeFeed detect the AprilTags in them and map the
gaze to slice pixels. That stage is a separate unit tested on rendered marker frames; the frame
reception here is a thin adapter (the fake device in tests serves no video: see docs/gaze.md). Failures never freeze the caller:
an unreachable device, a status request that hangs, or a gaze stream that goes quiet for
`stall_timeout_s` put the worker in state "lost" with a message saying what happened, and it retries
every `reconnect_interval_s` until the device answers again ("connected") or the app stops it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

from .errors import ClinsegInputError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080


class DeviceUnreachableError(ClinsegInputError):
    """No Companion device answered at the given address."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    address: str
    port: int


@dataclass(frozen=True)
class DeviceStatus:
    """What the app shows next to the viewer. Nothing identifying: no phone serials."""

    connection: str = "stopped"  # stopped | connecting | connected | paused | lost
    battery_percent: int | None = None
    battery_state: str | None = None
    worn: bool | None = None  # from the latest gaze sample
    eye_events: bool = False  # the device streams its own fixations/blinks
    scene_camera: bool | None = None  # scene frames streaming (None: not requested)
    gaze_rate_hz: float = 0.0
    last_gaze_age_s: float | None = None
    message: str = ""
    reconnects: int = 0


@dataclass(frozen=True)
class SceneGaze:
    """A gaze sample in scene-camera pixels (Neon: 1600 x 1200), unix time in seconds."""

    t: float
    x: float
    y: float
    worn: bool


@dataclass(frozen=True)
class DeviceFixation:
    t_start: float
    t_end: float
    x: float  # mean gaze, scene px
    y: float


@dataclass(frozen=True)
class DeviceBlink:
    t_start: float
    t_end: float


def discover_devices(search_s: float = 3.0) -> list[DeviceInfo]:
    """Companion devices announcing themselves by zeroconf (mDNS) on the local network."""
    from pupil_labs.realtime_api.discovery import Network

    async def _run():
        async with Network() as net:
            await asyncio.sleep(search_s)
            return net.devices

    found = asyncio.run(_run())
    return [DeviceInfo(d.name.split(":")[1] if d.name.count(":") >= 2 else d.name, d.addresses[0], d.port)
            for d in found if d.addresses]


async def fetch_status(address: str, port: int = DEFAULT_PORT, timeout_s: float = 3.0):
    """The device's full status (pupil_labs Status) via the real client, or DeviceUnreachableError."""
    from pupil_labs.realtime_api.device import Device

    try:
        async with Device(address, port) as dev:
            return await asyncio.wait_for(dev.get_status(), timeout_s)
    except (asyncio.TimeoutError, OSError, ValueError) as e:  # aiohttp's client errors are OSErrors
        raise DeviceUnreachableError(
            f"no Pupil Labs Companion device answered at {address}:{port} ({type(e).__name__}): check that the "
            f"phone is on this network, the Companion app is open and the address is right.") from e
    except Exception as e:  # aiohttp.ClientError and friends: not all derive from OSError
        raise DeviceUnreachableError(
            f"the device at {address}:{port} did not give its status ({type(e).__name__}: {e}).") from e


def probe(address: str, port: int = DEFAULT_PORT, timeout_s: float = 3.0) -> DeviceStatus:
    """One-shot: is there a device, and what is its battery? (No streaming.)"""
    st = asyncio.run(fetch_status(address, port, timeout_s))
    ev = st.direct_eye_events_sensor()
    return DeviceStatus("connected", st.phone.battery_level, st.phone.battery_state,
                        eye_events=bool(ev is not None and ev.connected))


class _Lost(Exception):
    """The stream ended or went quiet: tear down and reconnect."""


class GazeStreamWorker:
    """Background gaze (and eye event) streaming from one device, with recovery.

        w = GazeStreamWorker("192.168.1.20").start()
        ... w.status(); samples = w.drain_gaze(); fixations, blinks = w.drain_events()
        w.pause(); w.resume(); w.stop()
    """

    def __init__(self, address: str, port: int = DEFAULT_PORT, *, use_eye_events: bool = True,
                 stall_timeout_s: float = 2.0, reconnect_interval_s: float = 1.0, request_timeout_s: float = 3.0,
                 buffer_s: float = 60.0, scene_frames: bool = False, frame_rate_hz: float = 5.0):
        self.address, self.port = address, int(port)
        self.use_eye_events = use_eye_events
        self.stall_timeout_s = stall_timeout_s
        self.reconnect_interval_s = reconnect_interval_s
        self.request_timeout_s = request_timeout_s
        self._gaze: deque[SceneGaze] = deque(maxlen=int(buffer_s * 200))
        self._fixations: deque[DeviceFixation] = deque(maxlen=10_000)
        self._blinks: deque[DeviceBlink] = deque(maxlen=10_000)
        self.scene_frames = scene_frames
        self.frame_rate_hz = float(frame_rate_hz)
        # a few seconds of frames at most: a UI that stops polling must not pile up 6 MB images
        self._frames: deque = deque(maxlen=max(2, int(2 * frame_rate_hz)))
        self._lock = threading.Lock()
        self._status = DeviceStatus()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_evt: asyncio.Event | None = None
        self._paused = threading.Event()
        self._recent_t: deque[float] = deque(maxlen=400)  # arrival times, for the rate
        self._last_arrival: float | None = None

    # -- control (UI thread) -----------------------------------------------------------------------
    def start(self) -> "GazeStreamWorker":
        if self._thread is not None and self._thread.is_alive():
            return self
        self._paused.clear()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="clinseg-gaze", daemon=True)
        self._thread.start()
        ready.wait(timeout=5)
        return self

    def pause(self) -> None:
        """Keep the connection, stop collecting gaze (e.g. while the user scrolls slices)."""
        self._paused.set()
        self._set(connection="paused", message="paused")

    def resume(self) -> None:
        self._paused.clear()
        self._set(connection="connecting", message="resuming")

    def stop(self, timeout_s: float = 5.0) -> None:
        loop, evt = self._loop, self._stop_evt
        if loop is not None and evt is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(evt.set)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self._thread = None
        self._set(connection="stopped", message="stopped")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> DeviceStatus:
        with self._lock:
            st = self._status
        now = time.monotonic()
        age = None if self._last_arrival is None else now - self._last_arrival
        recent = [t for t in list(self._recent_t) if now - t <= 1.0]
        return replace(st, last_gaze_age_s=age, gaze_rate_hz=float(len(recent)))

    def drain_gaze(self) -> list[SceneGaze]:
        with self._lock:
            out = list(self._gaze)
            self._gaze.clear()
        return out

    def drain_events(self) -> tuple[list[DeviceFixation], list[DeviceBlink]]:
        with self._lock:
            f, b = list(self._fixations), list(self._blinks)
            self._fixations.clear()
            self._blinks.clear()
        return f, b

    def drain_frames(self) -> list:
        """Scene frames received since the last call (integrations.screen_mapping.SceneFrame), oldest first."""
        with self._lock:
            out = list(self._frames)
            self._frames.clear()
        return out

    def wait_for_gaze(self, n: int = 1, timeout_s: float = 5.0) -> bool:
        """Block (bounded) until at least n samples are buffered: for scripts and tests."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self._lock:
                if len(self._gaze) >= n:
                    return True
            time.sleep(0.02)
        return False

    def wait_for_state(self, connection: str, timeout_s: float = 10.0) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.status().connection == connection:
                return True
            time.sleep(0.02)
        return False

    # -- worker thread ---------------------------------------------------------------------------
    def _set(self, **kw) -> None:
        with self._lock:
            self._status = replace(self._status, **kw)

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            asyncio.set_event_loop(loop)
            self._stop_evt = asyncio.Event()
            ready.set()
            loop.run_until_complete(self._run())
        finally:
            with contextlib.suppress(Exception):
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()
            self._loop = None

    async def _run(self) -> None:
        attempt = 0
        while not self._stop_evt.is_set():
            if self._paused.is_set():
                await self._sleep(0.1)
                continue
            if attempt:
                self._set(reconnects=attempt)
            self._set(connection="connecting" if attempt == 0 else "lost")
            try:
                await self._session()
                attempt = 0  # returned on pause or stop: not a failure
                continue
            except DeviceUnreachableError as e:
                self._set(connection="lost", message=str(e), worn=None)
            except _Lost as e:
                self._set(connection="lost", message=f"{e}; reconnecting every {self.reconnect_interval_s:g} s", worn=None)
            except Exception as e:  # a library error must not kill the worker: report and retry
                log.warning("gaze stream error: %s", type(e).__name__)
                self._set(connection="lost", message=f"stream error ({type(e).__name__}: {e}); reconnecting", worn=None)
            attempt += 1
            await self._sleep(self.reconnect_interval_s)

    async def _sleep(self, s: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop_evt.wait(), s)

    async def _session(self) -> None:
        from pupil_labs.realtime_api.device import Device
        from pupil_labs.realtime_api.models import Phone, Sensor

        st = await fetch_status(self.address, self.port, self.request_timeout_s)
        gaze_sensor = st.direct_gaze_sensor()
        if gaze_sensor is None or not gaze_sensor.connected:
            raise _Lost("the device answers but its gaze sensor is not connected (glasses unplugged?)")
        ev_sensor = st.direct_eye_events_sensor() if self.use_eye_events else None
        has_events = bool(ev_sensor is not None and ev_sensor.connected)
        self._set(battery_percent=st.phone.battery_level, battery_state=st.phone.battery_state, eye_events=has_events)
        tasks = [asyncio.ensure_future(self._pump_gaze(gaze_sensor.url))]
        if has_events:
            tasks.append(asyncio.ensure_future(self._pump_events(ev_sensor.url)))
        optional = []  # the scene video failing must not stop the gaze: it is reported, not fatal
        if self.scene_frames:
            world = st.direct_world_sensor()
            if world is not None and world.connected:
                optional.append(asyncio.ensure_future(self._pump_frames(world.url)))
                self._set(scene_camera=True)
            else:
                self._set(scene_camera=False)

        async def watch_status():
            # battery and sensor changes on the websocket; the library reconnects it by itself
            async with Device(self.address, self.port) as dev:
                async for comp in dev.status_updates():
                    if isinstance(comp, Phone):
                        self._set(battery_percent=comp.battery_level, battery_state=comp.battery_state)
                    elif isinstance(comp, Sensor) and comp.sensor == "gaze" and comp.conn_type == "DIRECT" \
                            and not comp.connected:
                        raise _Lost("the gaze sensor disconnected (glasses unplugged?)")

        tasks.append(asyncio.ensure_future(watch_status()))
        started = time.monotonic()
        self._last_arrival = None
        self._set(connection="connected", message=f"streaming gaze from {self.address}:{self.port}"
                  + (" with on-device fixations/blinks" if has_events else "; fixations detected here")
                  + ("" if not self.scene_frames else "; scene camera on" if optional
                     else "; no scene camera stream: gaze cannot be mapped to the screen"))
        try:
            while not self._stop_evt.is_set():
                if self._paused.is_set():
                    return  # drop the streams while paused; _run reconnects on resume
                for t in tasks:
                    if t.done():
                        exc = t.exception()
                        if isinstance(exc, (_Lost, DeviceUnreachableError)):
                            raise exc
                        raise _Lost("the device closed the gaze stream" if exc is None
                                    else f"the gaze stream failed ({type(exc).__name__})")
                for t in list(optional):
                    if t.done():
                        optional.remove(t)
                        exc = None if t.cancelled() else t.exception()
                        self._set(scene_camera=False, message=f"scene camera stream ended"
                                  + (f" ({type(exc).__name__})" if exc else "") + ": gaze is not mapped to the screen")
                last = self._last_arrival if self._last_arrival is not None else started
                if time.monotonic() - last > self.stall_timeout_s:
                    raise _Lost(f"no gaze for {self.stall_timeout_s:g} s (device out of reach or app closed)")
                await self._sleep(0.05)
        finally:
            for t in tasks + optional:
                t.cancel()
            await asyncio.gather(*tasks, *optional, return_exceptions=True)

    async def _pump_gaze(self, url: str) -> None:
        from pupil_labs.realtime_api.streaming import receive_gaze_data

        async for g in receive_gaze_data(url, timeout=self.request_timeout_s):
            now = time.monotonic()
            s = SceneGaze(float(g.timestamp_unix_seconds), float(g.x), float(g.y), bool(g.worn))
            with self._lock:
                self._gaze.append(s)
                self._status = replace(self._status, worn=s.worn)
            self._last_arrival = now
            self._recent_t.append(now)

    async def _pump_events(self, url: str) -> None:
        from pupil_labs.realtime_api.streaming import BlinkEventData, FixationEventData, receive_eye_events_data

        async for e in receive_eye_events_data(url, timeout=self.request_timeout_s):
            with self._lock:
                if isinstance(e, FixationEventData) and e.event_type == 1:
                    self._fixations.append(DeviceFixation(e.start_time_ns / 1e9, e.end_time_ns / 1e9,
                                                          float(e.mean_gaze_x), float(e.mean_gaze_y)))
                elif isinstance(e, BlinkEventData):
                    self._blinks.append(DeviceBlink(e.start_time_ns / 1e9, e.end_time_ns / 1e9))

    async def _pump_frames(self, url: str) -> None:
        """Thin adapter over the library's video stream: keep <= frame_rate_hz frames as SceneFrame."""
        from pupil_labs.realtime_api.streaming import receive_video_frames

        from .screen_mapping import SceneFrame

        period = 1.0 / max(self.frame_rate_hz, 1e-3)
        last_t = float("-inf")
        async for f in receive_video_frames(url, timeout=self.request_timeout_s):
            t = float(f.timestamp_unix_seconds)
            if t - last_t < period:
                continue  # decoding to BGR and marker detection are the expensive parts: skip early
            last_t = t
            frame = SceneFrame(t, f.bgr_buffer())
            with self._lock:
                self._frames.append(frame)
