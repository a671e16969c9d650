"""SamplingParams refuses temperatures the sampler cannot use; tiny ones are greedy."""

from __future__ import annotations

import math

import pytest
import torch

from prfaas.engine.sampling import MIN_TEMPERATURE, SamplingParams, sample


@pytest.mark.parametrize("temperature", [math.nan, math.inf, -1.0])
def test_unusable_temperatures_are_refused(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        SamplingParams(temperature=temperature)


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, MIN_TEMPERATURE / 2])
def test_subnormal_and_tiny_temperatures_are_greedy(temperature: float) -> None:
    params = SamplingParams(temperature=temperature, seed=7)
    logits = torch.tensor([1.0, 30.0, 2.0])
    assert params.greedy and sample(logits, params, 0) == 1  # dividing by them would overflow to inf/NaN


def test_small_temperatures_still_sample() -> None:
    params = SamplingParams(temperature=MIN_TEMPERATURE, seed=7)
    assert not params.greedy and sample(torch.tensor([1.0, 30.0, 2.0]), params, 0) == 1
