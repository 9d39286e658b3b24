"""The real pupil_labs.realtime_api client against a fake Neon on 127.0.0.1 (tests/fake_neon.py)."""
from __future__ import annotations

import math
import time

import pytest

from integrations.pupil_device import DeviceUnreachableError, GazeStreamWorker, probe
from tests.fake_neon import FakeNeon, _free_port


def _circle(t: float):
    return 800 + 100 * math.cos(t), 600 + 100 * math.sin(t), True


def test_probe_by_address_reads_status():
    with FakeNeon(battery=64) as dev:
        st = probe("127.0.0.1", dev.port, timeout_s=3)
        assert st.connection == "connected" and st.battery_percent == 64 and st.battery_state == "OK"
        assert st.eye_events  # the fake offers the Companion >= 2.9 eye_events sensor


def test_probe_unreachable_is_a_clear_error():
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(DeviceUnreachableError, match=f"127.0.0.1:{port}"):
        probe("127.0.0.1", port, timeout_s=2)
    assert time.monotonic() - t0 < 5


def test_gaze_status_and_eye_events_arrive():
    with FakeNeon(gaze=_circle, battery=87) as dev:
        w = GazeStreamWorker("127.0.0.1", dev.port, stall_timeout_s=2.0).start()
        try:
            assert w.wait_for_state("connected", 10), w.status()
            assert w.wait_for_gaze(50, 10), w.status()
            g = w.drain_gaze()
            assert len(g) >= 50
            assert all(abs(math.hypot(s.x - 800, s.y - 600) - 100) < 0.01 for s in g)  # float32 on the wire
            assert all(s.worn for s in g)
            ts = [s.t for s in g]
            assert ts == sorted(ts) and abs(ts[-1] - time.time()) < 2.0  # wall clock from RTCP sender reports
            st = w.status()
            assert st.battery_percent == 87 and st.worn is True and st.eye_events
            # battery pushed on the status websocket
            dev.set_battery(12)
            end = time.monotonic() + 5
            while w.status().battery_percent != 12 and time.monotonic() < end:
                time.sleep(0.05)
            assert w.status().battery_percent == 12 and w.status().battery_state == "LOW"
            # glasses taken off
            dev.gaze = lambda t: (0.0, 0.0, False)
            end = time.monotonic() + 5
            while w.status().worn is not False and time.monotonic() < end:
                time.sleep(0.05)
            assert w.status().worn is False
            # on-device fixation and blink events
            now = time.time()
            dev.send_fixation(now - 0.3, now, 812.5, 590.0)
            dev.send_blink(now - 0.1, now)
            end = time.monotonic() + 5
            fx, bl = [], []
            while (not fx or not bl) and time.monotonic() < end:
                f, b = w.drain_events()
                fx += f
                bl += b
                time.sleep(0.05)
            assert len(fx) == 1 and abs(fx[0].x - 812.5) < 1e-3 and abs(fx[0].t_end - now) < 1e-3
            assert len(bl) == 1
        finally:
            w.stop()
        assert not w.running and w.status().connection == "stopped"


def test_device_vanishes_then_recovers():
    with FakeNeon(gaze=_circle) as dev:
        w = GazeStreamWorker("127.0.0.1", dev.port, stall_timeout_s=1.0, reconnect_interval_s=0.3).start()
        try:
            assert w.wait_for_gaze(20, 10), w.status()
            dev.vanish()
            assert w.wait_for_state("lost", 8), w.status()
            msg = w.status().message
            assert msg and ("no gaze" in msg or "closed" in msg or "no Pupil Labs" in msg), msg
            w.drain_gaze()
            time.sleep(0.5)
            assert len(w.drain_gaze()) == 0  # nothing arrives while it is gone
            assert w.status().worn is None  # unknown, not stale
            dev.revive()
            assert w.wait_for_state("connected", 10), w.status()
            assert w.wait_for_gaze(20, 10), w.status()
            assert w.status().reconnects >= 1
        finally:
            w.stop()


def test_pause_resume_and_unreachable_worker_reports():
    with FakeNeon() as dev:
        w = GazeStreamWorker("127.0.0.1", dev.port, reconnect_interval_s=0.3).start()
        try:
            assert w.wait_for_gaze(10, 10)
            w.pause()
            time.sleep(0.4)
            w.drain_gaze()
            time.sleep(0.5)
            assert len(w.drain_gaze()) == 0 and w.status().connection == "paused"
            w.resume()
            assert w.wait_for_gaze(10, 10), w.status()
        finally:
            w.stop()
    port = _free_port()
    t0 = time.monotonic()
    w = GazeStreamWorker("127.0.0.1", port, reconnect_interval_s=0.3).start()
    assert time.monotonic() - t0 < 2  # start never blocks on the network
    try:
        assert w.wait_for_state("lost", 8)
        assert f"127.0.0.1:{port}" in w.status().message
    finally:
        w.stop()
