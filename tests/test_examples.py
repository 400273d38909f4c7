"""The digits training example (issue: a real training run on effconv
kernels reaches >= 95% test accuracy on CPU)."""
from __future__ import annotations

import pytest

from effconv.examples import train_digits


@pytest.mark.slow
def test_squeezenet_reaches_95_percent(capsys):
    acc = train_digits.main(["--model", "squeezenet1_1"])
    out = capsys.readouterr()
    assert acc >= 0.95, out.out
    assert "ms/step" in out.out and "epoch 15/15" in out.err  # time per epoch and the progress bar


def test_mobilenet_v2_runs_and_baseline_flag(capsys):
    acc = train_digits.main(["--model", "mobilenet_v2", "--epochs", "1", "--size", "32"])
    assert 0.0 <= acc <= 1.0
    acc = train_digits.main(["--model", "mobilenet_v2", "--epochs", "1", "--size", "32", "--baseline", "torch"])
    assert "torchvision layers" in capsys.readouterr().out
