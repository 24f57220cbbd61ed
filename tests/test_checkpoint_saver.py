"""When to save during train: the schedule and the listeners."""

from __future__ import annotations

from torch_estimator import checkpoint as ckpt


def test_checkpoint_saver_timing_and_listeners():
    saved, calls = [], []

    class Listener:
        def begin(self):
            calls.append("begin")

        def before_save(self, step):
            calls.append(("before", step))

        def after_save(self, step):
            calls.append(("after", step))
            return step == 20

        def end(self, step):
            calls.append(("end", step))

    saver = ckpt.CheckpointSaver(lambda step: saved.append(step) or f"ckpt-{step}", every_steps=10, listeners=[Listener()])
    saver.begin(0, already_saved=False)
    assert saver.stop_requested is False
    stops = []
    for step in range(1, 26):
        if saver.should_save(step):
            saver.save(step)
            if saver.stop_requested and not stops:
                stops.append(step)
    saver.end(25)
    assert saved == [0, 10, 20, 25] and stops == [20]
    assert calls[-1] == ("end", 25)
