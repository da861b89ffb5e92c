"""The managed run (`fab run`): launch → setup → sync → train → watch, and carry on elsewhere when
spot takes the instance back. Each attempt is one instance.

    decide.py   what the laptop sees of an attempt (one SSH poll) and the verdict: pure functions
    stages.py   the named stages: provision, bootstrap, restore, start, pull, terminate; the Plan
    loop.py     the attempt loop and the watch loop (Journey), Ctrl-C, the run history events
    report.py   cost per attempt (spot price history) and the end-of-run summary
    history.py  outputs/<name>/run.json: the attempts and events of a run, rewritten atomically
    reentry.py  `fab run` again on a journey this laptop left running: watch it, no second machine
    detach.py   `fab run --detach`: the run handed to an Auto Scaling group of one; watch, summary
    cluster_loop.py  `fab run --nodes N`: the attempt and watch loops over every node of a cluster
    fleet.py    a cluster run's instances: launch, replace a lost node, relaunch elsewhere, terminate
"""

from ec2.journey.loop import GaveUp, Journey, RunFailed, stdin_asker
from ec2.journey.stages import Plan

__all__ = ["GaveUp", "Journey", "Plan", "RunFailed", "stdin_asker"]
