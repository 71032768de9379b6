"""The loss PNG of a DPO run also shows the validation reward accuracy and margin (engine/runlog.py)."""
import matplotlib.image
import pytest

import engine.runlog as runlog
from engine.runlog import RunLog, plot_losses

HISTORY = {"train": [(2, 0.69), (4, 0.6), (6, 0.5)], "val": [(3, 0.68), (6, 0.55)],
           "lr": [(1, 1e-4), (6, 5e-5)]}


def dpo_run(tmp_path, *validations):
    log = RunLog(tmp_path, "dpo_64x2", 6, 0, True, "none", {"beta": 0.1})
    for step, metrics in validations:
        log.validation(step, metrics)
    return log


def test_runlog_hands_the_plot_dpo_validation_rewards(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(runlog, "plot_losses", lambda history, path, title: drawn.update(history))
    with dpo_run(tmp_path, (3, {"loss": 0.68, "reward_acc": 0.5, "reward_margin": 0.01}),
                 (6, {"loss": 0.55, "reward_acc": 0.75, "reward_margin": 0.2})) as log:
        log.train(6, 0, {"loss": 0.5, "reward_acc": 0.9, "tokens": 10, "flops": 0.0, "seconds": 1.0}, 5e-5)
        log.plot(HISTORY)
    assert drawn["val_reward_acc"] == [(3, 0.5), (6, 0.75)]  # validation records only, not the training line's
    assert drawn["val_reward_margin"] == [(3, 0.01), (6, 0.2)]
    assert drawn["val"] == HISTORY["val"] and drawn["lr"] == HISTORY["lr"]


def test_other_stages_get_the_history_as_it_is(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(runlog, "plot_losses", lambda history, path, title: drawn.update(history))
    with dpo_run(tmp_path, (3, {"loss": 0.68})) as log:
        log.plot(HISTORY)
    assert drawn == HISTORY


@pytest.mark.parametrize("rewards, panels", [({}, 1), ({"val_reward_acc": [(3, 0.5), (6, 0.75)]}, 2),
                                             ({"val_reward_acc": [(3, 0.5)], "val_reward_margin": [(3, 0.1)]}, 2)])
def test_the_png_gets_a_reward_panel(tmp_path, rewards, panels):
    path = tmp_path / "loss.png"
    plot_losses({**HISTORY, **rewards}, path, "dpo_64x2")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width == 700 and height == {1: 400, 2: 650}[panels]


def test_a_window_counts_the_batch_as_tokens_and_what_the_model_ran_as_flops():
    """A loss that ran a shared start once (sft_loss) reports the shapes it ran: tokens/s still counts the
    batch, MFU only the work done."""
    import torch
    window = runlog.MetricWindow()
    per_token = lambda width: 10.0 * width
    window.add(torch.tensor(1.0), {"computed": [(1, 60), (4, 40)]}, [(4, 100)], per_token)
    window.add(torch.tensor(3.0), {}, [(2, 50)], per_token)
    values = window.reduce(torch.device("cpu"), world_size=1)
    assert values["tokens"] == 4 * 100 + 2 * 50
    assert values["flops"] == 60 * 600 + 160 * 400 + 100 * 500
    assert values["loss"] == 2.0 and "computed" not in values
