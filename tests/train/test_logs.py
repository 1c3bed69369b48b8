import shutil

import pytest

from offrl.agents import CQL
from offrl.data.collect import rollout_transitions
from offrl.data.dataset import load_dataset
from offrl.data.registry import register_dataset

pytest.importorskip("tensorboard")


def _scalar_steps(directory, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_tensorboard_events_after_a_resume_hold_each_step_once(tmp_path):
    arrays, _ = rollout_transitions("Pendulum-v1", None, 400, seed=0, num_envs=2)
    register_dataset("pendulum/random-v0", arrays, {"env_id": "Pendulum-v1"})
    tiny = {"actor_hidden": [8], "critic_hidden": [8], "n_actions": 2, "batch_size": 16}
    options = {"eval_env": False, "log_every": 10, "checkpoint_every": 20, "tensorboard": True, "show_progress": False}
    run = tmp_path / "run"

    def keep_step_20_checkpoint(event, step, row):
        if (event, step) == ("log", 30):  # step 30 is logged; its checkpoint is not written yet
            shutil.copy(run / "checkpoint.pt", tmp_path / "checkpoint-20.pt")

    CQL("fast", **tiny).fit(load_dataset("pendulum/random-v0"), 30, run_dir=run,
                            callbacks=[keep_step_20_checkpoint], **options)
    # as if killed right after step 30's log row: the CSV and the events hold step 30, the checkpoint step 20
    shutil.copy(tmp_path / "checkpoint-20.pt", run / "checkpoint.pt")
    (run / "final.json").unlink()
    CQL("fast", **tiny).fit(load_dataset("pendulum/random-v0"), 50, run_dir=tmp_path / "run", resume=True, **options)
    assert _scalar_steps(tmp_path / "run" / "tensorboard" / "train", "train/critic_loss") == [10, 20, 30, 40, 50]
