"""A fake Neon Companion device on 127.0.0.1 that the real `pupil_labs.realtime_api` client talks to.

What the real client needs (read from pupil_labs/realtime_api 1.9.0 and aiortsp):
- HTTP `GET /api/status` -> {"message": ..., "result": [{"model": "Phone"|"Hardware"|"Sensor", "data": {...}}]}
- websocket `/api/status`: the same components, one JSON message each, then updates;
- per DIRECT sensor an RTSP URL `rtsp://<ip>:<port>/?<params>`: OPTIONS (with a `Public` header),
  DESCRIBE (SDP with an rtpmap, whose clock rate turns RTP timestamps into seconds), SETUP (UDP
  `client_port=a-b` -> `server_port`, `Session`), PLAY; then RTP packets to the client's RTP port and
  RTCP sender reports (NTP wall clock <-> RTP time) to its RTCP port. Until the first SR arrives the
  client drops packets (it cannot timestamp them).
- gaze payload: struct "!ffB" (x, y, worn 255/0) -> GazeData; eye events: "!iqqffffffffff"
  (fixation/saccade, type 1/0) and "!iqq" (blink, type 4).
Everything binds 127.0.0.1. `vanish()` closes every server and connection (the phone left the
network); `revive()` brings them back on the same ports.
"""
from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import WSMsgType, web

NTP_OFFSET = 2208988800  # seconds from 1900 to 1970
CLOCK = 90000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _RtspClient:
    transport: asyncio.Transport
    stream: str = "gaze"
    client_rtp: tuple[str, int] | None = None
    client_rtcp: tuple[str, int] | None = None
    playing: bool = False
    seq: int = 0
    ssrc: int = 0x1234ABCD


@dataclass
class FakeNeon:
    """Start with `with FakeNeon() as dev:`; `dev.port` is the HTTP port to give the client."""

    gaze: Callable[[float], tuple[float, float, bool]] = lambda t: (800.0, 600.0, True)
    rate_hz: float = 200.0
    battery: int = 87
    eye_events: bool = True  # Companion >= 2.9 offers the eye_events sensor
    host: str = "127.0.0.1"
    port: int = field(default_factory=_free_port)
    rtsp_port: int = field(default_factory=_free_port)
    sent_gaze: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-neon", daemon=True)
        self._runner: web.AppRunner | None = None
        self._rtsp_server: asyncio.AbstractServer | None = None
        self._udp: socket.socket | None = None
        self._clients: list[_RtspClient] = []
        self._websockets: set[web.WebSocketResponse] = set()
        self._tasks: list[asyncio.Task] = []
        self._pending_events: deque[bytes] = deque()
        self.t0 = time.time()
        self.up = False

    # -- public control (any thread) -------------------------------------------------------------
    def __enter__(self) -> "FakeNeon":
        self._thread.start()
        self.revive()
        return self

    def __exit__(self, *exc) -> None:
        self.vanish()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def revive(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def vanish(self) -> None:
        if self.up:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)

    def set_battery(self, percent: int) -> None:
        """Change the battery and push it on the status websocket, as the Companion app does."""
        self.battery = percent
        asyncio.run_coroutine_threadsafe(self._broadcast(self._phone()), self._loop).result(timeout=5)

    def send_fixation(self, t_start: float, t_end: float, x: float, y: float) -> None:
        """Queue an on-device fixation event (scene px, unix seconds) for the eye_events stream."""
        ns0, ns1 = int(t_start * 1e9), int(t_end * 1e9)
        self._pending_events.append(struct.pack("!iqqffffffffff", 1, ns0, ns1, x, y, x, y, x, y, 0.0, 0.0, 0.0, 0.0))

    def send_blink(self, t_start: float, t_end: float) -> None:
        self._pending_events.append(struct.pack("!iqq", 4, int(t_start * 1e9), int(t_end * 1e9)))

    # -- status model ------------------------------------------------------------------------------
    def _phone(self) -> dict:
        return {"model": "Phone", "data": {
            "battery_level": self.battery, "battery_state": "OK" if self.battery > 15 else "LOW",
            "device_id": "fake0001", "device_name": "Fake Neon", "ip": self.host,
            "memory": 10 ** 10, "memory_state": "OK", "time_echo_port": None}}

    def _sensor(self, name: str, connected: bool = True) -> dict:
        return {"model": "Sensor", "data": {
            "sensor": name, "conn_type": "DIRECT", "connected": connected, "ip": self.host,
            "port": self.rtsp_port, "protocol": "rtsp", "params": f"camera={name}", "stream_error": False}}

    def _components(self) -> list[dict]:
        comps = [self._phone(), {"model": "Hardware", "data": {"version": "2.0", "module_serial": "fake"}},
                 self._sensor("gaze")]
        if self.eye_events:
            comps.append(self._sensor("eye_events"))
        return comps

    # -- servers -----------------------------------------------------------------------------------
    async def _start(self) -> None:
        if self.up:
            return
        app = web.Application()
        app.router.add_get("/api/status", self._status)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()
        self._rtsp_server = await self._loop.create_server(lambda: _RtspProtocol(self), self.host, self.rtsp_port,
                                                           reuse_address=True)
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((self.host, 0))
        self._udp.setblocking(False)
        self._tasks = [asyncio.ensure_future(self._pump())]
        self.up = True

    async def _stop(self) -> None:
        self.up = False
        for t in self._tasks:
            t.cancel()
        for c in list(self._clients):
            c.transport.close()
        self._clients.clear()
        for ws in list(self._websockets):
            await ws.close()
        self._websockets.clear()
        if self._rtsp_server is not None:
            self._rtsp_server.close()
            await self._rtsp_server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    async def _status(self, request: web.Request):
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            self._websockets.add(ws)
            for comp in self._components():
                await ws.send_str(json.dumps(comp))
            async for msg in ws:  # keep open until either side closes
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
            self._websockets.discard(ws)
            return ws
        return web.json_response({"message": "Success", "result": self._components()})

    async def _broadcast(self, comp: dict) -> None:
        for ws in list(self._websockets):
            await ws.send_str(json.dumps(comp))

    # -- RTP/RTCP ----------------------------------------------------------------------------------
    def _rtp_ts(self, t: float) -> int:
        return int((t - self.t0) * CLOCK) & 0xFFFFFFFF

    def _send(self, addr, data: bytes) -> None:
        if self._udp is not None and addr is not None:
            try:
                self._udp.sendto(data, addr)
            except OSError:
                pass

    def _sender_report(self, c: _RtspClient, now: float) -> bytes:
        frac, sec = (now % 1.0), int(now) + NTP_OFFSET
        return struct.pack("!BBHIIIIII", 0x80, 200, 6, c.ssrc, sec, int(frac * 2 ** 32), self._rtp_ts(now), c.seq, 0)

    def _rtp(self, c: _RtspClient, now: float, payload: bytes) -> bytes:
        c.seq = (c.seq + 1) & 0xFFFF
        return struct.pack("!BBHII", 0x80, 96, c.seq, self._rtp_ts(now), c.ssrc) + payload

    async def _pump(self) -> None:
        period = 1.0 / self.rate_hz
        last_sr = 0.0
        next_t = time.time()
        while True:
            now = time.time()
            playing = [c for c in self._clients if c.playing]
            if now - last_sr >= 0.5:
                for c in playing:
                    self._send(c.client_rtcp, self._sender_report(c, now))
                last_sr = now
            for c in playing:
                if c.stream == "gaze":
                    x, y, worn = self.gaze(now - self.t0)
                    self._send(c.client_rtp, self._rtp(c, now, struct.pack("!ffB", x, y, 255 if worn else 0)))
                    self.sent_gaze += 1
            ev = [c for c in playing if c.stream == "eye_events"]
            while ev and self._pending_events:
                payload = self._pending_events.popleft()
                for c in ev:
                    self._send(c.client_rtp, self._rtp(c, now, payload))
            next_t += period
            await asyncio.sleep(max(0.0, next_t - time.time()))


class _RtspProtocol(asyncio.Protocol):
    """Just enough RTSP/1.0 for aiortsp's RTSPMediaSession (UDP transport)."""

    def __init__(self, dev: FakeNeon):
        self.dev = dev
        self.buf = b""
        self.client: _RtspClient | None = None

    def connection_made(self, transport) -> None:
        self.client = _RtspClient(transport)
        self.dev._clients.append(self.client)

    def connection_lost(self, exc) -> None:
        if self.client in self.dev._clients:
            self.dev._clients.remove(self.client)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            method, url, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
            self._answer(method, url, headers)

    def _answer(self, method: str, url: str, h: dict) -> None:
        c = self.client
        extra: dict[str, str] = {}
        body = b""
        if "camera=" in url:
            c.stream = url.split("camera=", 1)[1].split("&")[0]
        if method == "OPTIONS":
            extra["Public"] = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"
        elif method == "DESCRIBE":
            enc = "com.pupillabs.gaze1" if c.stream == "gaze" else "com.pupillabs.eye_events1"
            body = (f"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=fake neon\r\nt=0 0\r\n"
                    f"m=application 0 RTP/AVP 96\r\na=rtpmap:96 {enc}/{CLOCK}\r\n").encode()
            extra["Content-Type"] = "application/sdp"
        elif method == "SETUP":
            tr = dict(p.split("=", 1) for p in h.get("transport", "").split(";") if "=" in p)
            a, b = (int(v) for v in tr["client_port"].split("-"))
            c.client_rtp, c.client_rtcp = ("127.0.0.1", a), ("127.0.0.1", b)
            sp = self.dev._udp.getsockname()[1] if self.dev._udp else 0
            extra["Transport"] = f"RTP/AVP;unicast;client_port={a}-{b};server_port={sp}-{sp}"
            extra["Session"] = "FAKE1;timeout=60"
        elif method == "PLAY":
            c.playing = True
        elif method == "TEARDOWN":
            c.playing = False
        msg = f"RTSP/1.0 200 OK\r\nCSeq: {h.get('cseq', '0')}\r\n"
        for k, v in extra.items():
            msg += f"{k}: {v}\r\n"
        if body:
            msg += f"Content-Length: {len(body)}\r\n"
        c.transport.write(msg.encode() + b"\r\n" + body)
