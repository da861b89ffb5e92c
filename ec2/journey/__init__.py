"""The managed run (`fab run`): launch → setup → sync → train → watch, and carry on when spot takes
an instance back.

    engine.py   the one attempt loop and watch loop over a fleet of N instances, Ctrl-C, events
    recovery.py the strategies: relaunch one instance elsewhere; replace a cluster's lost node
    decide.py   what the laptop sees of a node (one SSH poll) and the verdicts: pure functions
    plan.py     the Plan (what to run), built once by plan_for for `fab run` and `fab train`
    stages.py   the named stages: provision, bootstrap, restore, reach_s3, start, pull, terminate
    loop.py     `fab run`: the engine with the relaunch strategy (Journey)
    cluster_loop.py  `fab run --nodes N`: the engine with the replace-node strategy (ClusterJourney)
    fleet.py    a cluster run's instances: launch, replace a lost node, relaunch elsewhere, terminate
    report.py   cost per attempt (spot price history) and the end-of-run summary
    history.py  outputs/<name>/run.json: the attempts (common.attempt) and events, rewritten atomically
    reentry.py  `fab run` again on a journey this laptop left running: watch it, no second machine
    cluster_reentry.py  `fab run --nodes N` again on a cluster run this laptop left: its members
    detach.py   `fab run --detach`: the run handed to an Auto Scaling group of one; watch, stop, summary
    detached_groups.py  the detached runs' groups in a region: status lines, removal, leftovers
"""

from ec2.journey.loop import GaveUp, Journey, RunFailed, stdin_asker
from ec2.journey.plan import Plan

__all__ = ["GaveUp", "Journey", "Plan", "RunFailed", "stdin_asker"]
