"""fig3.4 / fig3.5 presets: learning rates inside the thesis' range at width 500, and the preset named in
the verdict table's scale column."""
from __future__ import annotations

import pytest

from depthscope.experiments import get_experiment
from depthscope.experiments.training_dynamics import THESIS_LRS, at_thesis_width, preset_label


@pytest.mark.parametrize("name", ["fig3.4", "fig3.5"])
def test_quick_learning_rates_are_the_thesis_rates_at_width_500(name):
    """Mapped back with lr x N/500 (docs/sweeps.md), every quick rate lies inside the thesis' range."""
    exp = get_experiment(name)
    lo, hi = min(THESIS_LRS[name]), max(THESIS_LRS[name])
    for preset in ("quick", "paper"):
        p = exp.presets[preset]
        mapped = [at_thesis_width(lr, p["width"]) for lr in p["lrs"]]
        assert all(lo * (1 - 1e-9) <= m <= hi * (1 + 1e-9) for m in mapped), (preset, mapped)
    assert exp.presets["paper"]["lrs"] == list(THESIS_LRS[name])


def test_at_thesis_width_is_lr_times_width_over_500():
    assert at_thesis_width(7.8125e-2, 64) == pytest.approx(1e-2, rel=1e-12)
    assert at_thesis_width(1e-2, 500) == 1e-2


def test_preset_label_names_the_preset_and_what_was_changed():
    exp = get_experiment("fig3.5")
    assert preset_label(exp, exp.params("paper")) == "paper"
    assert preset_label(exp, exp.params("quick")) == "quick"
    assert preset_label(exp, exp.params("paper", {"seeds": 5, "probe_size": 500})) == "paper with probe_size=500, seeds=5"
