"""bench/ablation.py's budgets: equal wall-clock from step times measured side by side, and which
earlier results and training states a run may build on (issue 7, figure 5)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def ablation():
    sys.path.insert(0, str(BENCH))
    try:
        import ablation

        yield ablation
    finally:
        sys.path.remove(str(BENCH))


SPEED = {"stunet": 2.0, "cascade/base": 1.0, "cascade/tsr": 5.0, "unet3d": 8.0}  # s/step
SHARES = {
    "stunet": {"stunet": 1.0},
    "cascade": {"cascade/base": 0.5, "cascade/tsr": 0.5},
    "unet3d": {"unet3d": 1.0},
}


def test_budgets_fill_the_minutes_at_the_measured_speed(ablation):
    budgets, seconds, _ = ablation.step_budgets(SPEED, SHARES, done_steps={}, minutes=60)
    assert seconds == 3600
    assert budgets == {"stunet": 1800, "cascade/base": 1800, "cascade/tsr": 360, "unet3d": 450}


def test_a_done_reference_arm_sets_the_others_budget(ablation):
    # The STUNet arm trained 1,350 steps on a faster host; measured now it runs at 2 s/step, so
    # every other arm gets 2,700 s of this machine's time, and the done arm keeps its steps.
    done = {"stunet": {"stunet": 1350}}
    budgets, seconds, how = ablation.step_budgets(SPEED, SHARES, done_steps=done, minutes=60)
    assert seconds == 2700
    assert "1350" in how
    assert budgets == {"stunet": 1350, "cascade/base": 1350, "cascade/tsr": 270, "unet3d": 338}


def test_every_stage_gets_at_least_one_step(ablation):
    budgets, _, _ = ablation.step_budgets(SPEED, SHARES, done_steps={}, minutes=0.001)
    assert min(budgets.values()) == 1


def test_budget_stops_on_steps_or_seconds(ablation):
    assert not ablation.Budget(steps=3).spent(2, seconds=1e9)
    assert ablation.Budget(steps=3).spent(3, seconds=0.0)
    assert not ablation.Budget(seconds=10.0).spent(10**6, seconds=9.9)
    assert ablation.Budget(seconds=10.0).spent(0, seconds=10.0)


def settings(**changes) -> argparse.Namespace:
    base = {"minutes": 60.0, "budget": "calibrated", "lr": 3e-4, "threads": 2, "arms": "unet3d", "out": "x"}
    return argparse.Namespace(**{**base, **changes})


def write_results(path: Path, args: dict) -> None:
    path.write_text(json.dumps({"args": args, "arms": {"stunet": {"stages": {"stunet": {"steps": 1350}}}}}))


def test_wallclock_results_join_a_calibrated_run(ablation, tmp_path):
    # Results written before --budget existed have no "budget" key: they were wall-clock.
    old = {k: v for k, v in vars(settings(arms="stunet")).items() if k != "budget"}
    write_results(tmp_path / "results.json", old)
    done = ablation.load_done(tmp_path / "results.json", settings())
    assert list(done["arms"]) == ["stunet"]


def test_calibrated_results_do_not_join_a_wallclock_run(ablation, tmp_path):
    write_results(tmp_path / "results.json", vars(settings()))
    with pytest.raises(SystemExit, match="budget"):
        ablation.load_done(tmp_path / "results.json", settings(budget="wallclock"))


def test_results_with_another_learning_rate_are_refused(ablation, tmp_path):
    write_results(tmp_path / "results.json", vars(settings()))
    with pytest.raises(SystemExit, match="lr"):
        ablation.load_done(tmp_path / "results.json", settings(lr=1e-4))


def test_a_training_state_resumes_under_another_budget_but_not_another_recipe(ablation, tmp_path):
    path = tmp_path / "state" / "args.json"
    ablation.check_state_settings(path, settings(budget="wallclock", minutes=60.0))
    ablation.check_state_settings(path, settings(budget="calibrated", minutes=30.0))  # where it stops
    with pytest.raises(SystemExit, match="threads"):
        ablation.check_state_settings(path, settings(threads=1))  # what each step costs


def test_an_evaluation_stopped_part_way_resumes_with_the_same_clips(ablation, tmp_path):
    from lumiere.diffusion import DiffusionObjective
    from lumiere.models.text import load_text_encoder

    args = argparse.Namespace(
        preset="tiny", resolution=16, frames=8, seed=0, freeze_spatial=False, eval_batch=2, eval_steps=2,
        guidance=5.0, stride=4, tsr_share=0.5, tsr_sample_level=50, min_snr_gamma=None,
    )  # fmt: skip
    objective = DiffusionObjective()
    stages = ablation.build_arm("stunet", args, objective, image_model=None)
    stages[0].model.eval()
    encoder = load_text_encoder(None)
    prompts = ["a red circle moving right on a black background"] * 3 + ["a blue square bouncing"]
    cache = tmp_path / "samples"
    first, seconds = ablation.sample_arm(stages, prompts, encoder, objective, args, cache=cache)
    assert len(first) == 4 and first[0].shape == (3, 8, 16, 16) and seconds > 0
    assert sorted(p.name for p in cache.iterdir()) == ["samples_00000.pt", "samples_00002.pt"]
    # Stopped before the second batch was written; mark the first so reading it back shows.
    (cache / "samples_00002.pt").unlink()
    marked = torch.zeros(2, 3, 8, 16, 16)
    torch.save({"clips": marked, "seconds": 1.0}, cache / "samples_00000.pt")
    again, _ = ablation.sample_arm(stages, prompts, encoder, objective, args, cache=cache)
    assert torch.equal(torch.stack(again[:2]), marked)  # read back, not sampled again
    for a, b in zip(first[2:], again[2:], strict=True):
        assert torch.equal(a, b)  # sampled again, identically: seeds depend on the prompt index
    assert not torch.equal(first[0], first[2])


def test_budgets_calibrated_for_other_settings_are_refused(ablation, tmp_path):
    calibration = {"args": vars(settings(minutes=60.0)), "measured_at": "then", "budgets": {"stunet": 5}}
    (tmp_path / "calibration.json").write_text(json.dumps(calibration))
    results = {"args": {}, "arms": {}}
    kept = ablation.calibrated_budgets(settings(arms="cascade"), tmp_path, results, None, None, None, None)
    assert kept == {"stunet": 5}  # another arm, same protocol: the same budgets
    with pytest.raises(SystemExit, match="minutes"):
        ablation.calibrated_budgets(settings(minutes=30.0), tmp_path, results, None, None, None, None)
