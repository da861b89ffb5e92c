"""One spot journey, three engines, end to end against real peers (moto's server, sshd standing in
for the instances, the loopback IMDS, the real trainer): launch → train → a spot notice → the
checkpoint secured → AWS takes the noticed instance back → a replacement resumes at the very step
the notice stopped the trainer at → finished, the summary printed, nothing left running. The notice
is `fab rehearse` through AWS FIS (its stand-in) in every engine, so each also checks the
rehearsal's report.

The engines (tests/e2e/engines/): attended `fab run` (one instance, the laptop watching), cluster
`fab run --nodes 2` (the notice on node 1, only node 1 replaced) and detached `fab run --detach`
(the Auto Scaling group, no laptop until `fab watch`). What each engine alone promises is asserted
by its driver's check_engine, in the same run."""

from __future__ import annotations

import re

import pytest

from tests.e2e.engines import ENGINES, instances_of


# Launch, two attempts and a replacement: minutes on a loaded 2-core machine, more than the
# suite's 300 s default.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("engine", ENGINES)
def test_a_spot_notice_costs_no_step_and_the_run_finishes(engine, request):
    run = request.getfixturevalue(f"{engine}_engine")
    run.start()
    run.training()
    first = set(run.live())
    stopped = run.notice()
    run.take_back()
    done = run.finish()

    a1, a2 = done.attempts
    assert [a1.outcome, a2.outcome] == ["preempted", "finished"], done.out[-3000:]
    # The noticed instance ran attempt 1 only; attempt 2 ran on exactly one new instance.
    assert done.noticed in first and done.noticed in instances_of(a1)
    assert done.noticed not in instances_of(a2)
    assert len(set(instances_of(a2)) - first) == 1
    # Resumed from the checkpoint at the step the notice stopped it at: no step lost.
    assert re.search(rf"resumed from \S+ at step {stopped}\b", done.resumed_log), done.resumed_log[-3000:]
    assert f"run {done.name}: finished after 2 attempts on " in done.out
    assert run.live() == []  # the finished run's instances are terminated too
    run.check_engine(done, stopped)
