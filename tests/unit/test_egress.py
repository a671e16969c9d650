from prfaas.sched.egress import EgressMeter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_counts_bytes_inside_the_window() -> None:
    clock = Clock()
    meter = EgressMeter(capacity_gbps=1.0, window_s=10.0, clock=clock)
    meter.record(500_000_000, 4.0)  # 4 Gbit over 4 s, all inside the window
    assert abs(meter.rate_gbps() - 0.4) < 1e-9
    assert abs(meter.utilization() - 0.4) < 1e-9
    clock.now += 8.0  # window now [98, 108]: half of the transfer (96..100) is still inside
    assert abs(meter.rate_gbps() - 0.2) < 1e-9
    clock.now += 10.0
    assert meter.rate_gbps() == 0.0
    assert meter.total_bytes == 500_000_000


def test_utilization_is_capped_at_one() -> None:
    clock = Clock()
    meter = EgressMeter(capacity_gbps=0.001, window_s=1.0, clock=clock)
    meter.record(10_000_000, 0.5)
    assert meter.utilization() == 1.0
