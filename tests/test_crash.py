"""SIGKILL a real training process at random moments (also inside checkpoint saves), resume, compare bit for bit.

The same procedure as `python -m bench.crash`, with fewer kills.
"""

from __future__ import annotations

from bench.crash import kill_and_resume
from conftest import SHAKESPEARE


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(shakespeare_file, tmp_path):
    report = kill_and_resume(tmp_path, trials=3, steps=40, save_every=2, seed=0, data=shakespeare_file)
    assert len(report.kills) == 3 and len(set(report.kills)) == 3, report  # three kills at different steps
    assert report.steps_equal, report  # every step's training loss is bit-identical
    assert report.weights_equal, report


def test_streamed_text_resumes_exactly_after_sigkill(tmp_path):
    # all of tiny Shakespeare: validation holds out its first piece of text, training streams the rest
    report = kill_and_resume(tmp_path, trials=2, steps=30, save_every=2, seed=1, data=SHAKESPEARE,
                             extra=("data.streaming=true", "data.val_tokens=20000"))
    assert len(report.kills) == 2, report
    assert report.steps_equal and report.weights_equal, report
