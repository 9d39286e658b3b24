"""The app's live link keeps the gaze stream in time order whatever the device sends."""
from app.live_gaze import CLOCK_RESET_S, in_time_order
from prompting.gaze import GazeSample


def _s(t: float) -> GazeSample:
    return GazeSample(t=t, x=10.0, y=10.0)


def test_late_packets_are_dropped_and_order_kept():
    kept, newest, restarted = in_time_order([_s(1.0), _s(1.01), _s(1.005), _s(1.02)], None)
    assert [s.t for s in kept] == [1.0, 1.01, 1.02]
    assert newest == 1.02 and not restarted
    kept, newest, _ = in_time_order([_s(1.015), _s(1.03)], newest)
    assert [s.t for s in kept] == [1.03]


def test_clock_restart_starts_a_new_stream():
    kept, newest, restarted = in_time_order([_s(0.5), _s(0.51)], 100.0)
    assert restarted
    assert [s.t for s in kept] == [0.5, 0.51] and newest == 0.51
    assert 100.0 - 0.5 > CLOCK_RESET_S
