"""The global-local model: exact decomposition, beat period, shapes, determinism."""

from __future__ import annotations

import numpy as np
import torch

from inference.globallocal import Decompose, GlobalLocalConf, GlobalLocalNet
from inference.model import count_parameters


def _beats(period_s: float, n: int = 1000, fs_hz: float = 100.0) -> torch.Tensor:
    t = torch.arange(n) / fs_hz
    spikes = torch.exp(-(((t % period_s) - 0.3) ** 2) / (2 * 0.01**2))  # one narrow "QRS" per beat
    return spikes.expand(12, n).clone().unsqueeze(0)


def test_decomposition_is_exact_and_finds_the_beat_period() -> None:
    dec = Decompose(fs_hz=100.0, trend_window_s=1.0, min_period_s=0.3, max_period_s=2.0)
    x = torch.cat([_beats(0.8), _beats(1.25)]) + 0.5 * torch.linspace(0, 1, 1000)  # plus drift
    trend, seasonal, residual = dec(x)
    torch.testing.assert_close(trend + seasonal + residual, x, atol=1e-5, rtol=0)
    period = dec.period(x - trend)
    assert period.tolist() == [80, 125]
    # a strictly periodic signal is (almost) all trend + seasonal
    assert residual[:, :, 100:-100].abs().max() < 0.1


def test_forward_shapes_and_determinism() -> None:
    torch.manual_seed(0)
    conf = GlobalLocalConf(n_outputs=10)
    net = GlobalLocalNet(conf).eval()
    assert count_parameters(net) < 1_500_000
    x = torch.randn(3, 12, 1000) * 0.3
    with torch.inference_mode():
        a, b = net(x), net(x)
        single = net(x[1:2])
    assert a.shape == (3, 10)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(single[0], a[1], atol=1e-5, rtol=0)
    assert net.features(x).shape == (3, net.feature_dim)
    assert GlobalLocalConf.from_json(conf.to_json()) == conf


def test_flat_input_gives_finite_logits() -> None:
    net = GlobalLocalNet(GlobalLocalConf(n_outputs=2, n_samples=1000)).eval()
    with torch.inference_mode():
        out = net(torch.from_numpy(np.zeros((1, 12, 1000), dtype=np.float32)))
    assert torch.isfinite(out).all()
