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


def test_capacity_follows_a_link_that_became_the_bottleneck_and_probes_back_up() -> None:
    clock = Clock()
    meter = EgressMeter(capacity_gbps=1.0, window_s=10.0, clock=clock)
    for _ in range(4):  # short tails: the link has room, the configured capacity stands
        meter.record(125_000_000, 2.0, tail_s=0.01, compute_s=1.0)
    clock.now += 10.0
    assert not meter.link_bound() and meter.capacity_gbps() == 1.0
    for _ in range(5):  # 5 x 0.25 Gbit in the window, each transfer 2 s past its prefill: KV queued on the link
        clock.now += 1.0
        meter.record(31_250_000, 3.0, tail_s=2.0, compute_s=1.0)
    clock.now += 5.0
    assert meter.link_bound()
    assert abs(meter.capacity_gbps() - meter.rate_gbps()) < 1e-9 and meter.capacity_gbps() < 0.2
    measured = meter.capacity_gbps()
    assert meter.utilization() == 1.0  # the link is as full as it gets: the policy sees a hot link
    clock.now += 20.0  # tails gone (nothing queued): probe upward one window at a time, never past 1.0
    assert abs(meter.capacity_gbps() - measured * 1.25) < 1e-9
    for _ in range(30):
        clock.now += 10.0
        meter.capacity_gbps()
    assert meter.capacity_gbps() == 1.0
