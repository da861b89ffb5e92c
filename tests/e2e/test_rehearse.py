"""`fab rehearse` refusing a region FIS cannot interrupt spot instances in. The rehearsal itself runs
end to end in each engine of tests/e2e/test_spot_journey.py (tests/e2e/engines/): it sends the
notice of the attended, the cluster and the detached run, and each checks its report; the attended
engine also checks the experiment template FIS is given, the role's trust and linted policy, and a
first StartExperiment refused while the role propagates."""

from __future__ import annotations

import pytest
from invoke import Context
from invoke.exceptions import Exit

from tasks import rehearse as rehearse_task


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            ["region=ap-southeast-3"],
            "AWS FIS cannot interrupt spot instances in ap-southeast-3 (Asia Pacific (Jakarta)",
        ),
        (
            ["region=me-central-1"],
            "AWS FIS cannot interrupt spot instances in me-central-1 (Middle East (UAE)",
        ),
    ],
)
def test_a_region_fis_cannot_interrupt_in_is_refused_in_one_line(
    aws_env, tmp_path, capsys, settings, expected
):
    with pytest.raises(Exit) as e:
        rehearse_task.rehearse(Context(), name="job", set_=settings)
    err = capsys.readouterr().err
    assert e.value.code != 0 and expected in err and len(err.strip().splitlines()) == 1, err
