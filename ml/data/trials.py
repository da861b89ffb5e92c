"""The one naming rule for trial groups, shared by the index, every reader and every writer.

The release names trials ``trial_0000``, ``trial_0001``, ... (four digits, zero-padded, numbered
from 0 without gaps; docs in /work/shared/design/data-format.md). The index and the readers must
agree on it exactly: a file with ``trial_1`` used to be indexed, then read as ``trial_0001`` by the
compressed-file reader and fail with a KeyError mid-run. So a name is a trial when it looks like
one (``trial_`` and digits), and then it must be the padded spelling of its number, or the file
is refused when it is indexed.
"""

from __future__ import annotations

import re

from ml.errors import DataError

_LOOKS_LIKE_TRIAL = re.compile(r"trial_(\d+)")


def group_name(i: int) -> str:
    """Trial ``i``'s group: ``trial_0012``."""
    return f"trial_{i:04d}"


def trial_numbers(names, uri: str) -> list[str]:
    """The file's trial groups in order, checked against the rule: every ``trial_<digits>`` name
    spelled as ``group_name`` spells it, numbered from 0 without gaps. Other names are ignored
    (files may carry other groups)."""
    numbered = []
    for name in names:
        m = _LOOKS_LIKE_TRIAL.fullmatch(name)
        if not m:
            continue
        n = int(m.group(1))
        if name != group_name(n):
            raise DataError(
                f"{uri}: trial group {name!r} is not named by the rule (expected {group_name(n)!r}: "
                "trial_ and the number zero-padded to 4 digits); rename the groups in the file"
            )
        numbered.append((n, name))
    numbered.sort()
    if not numbered:
        raise DataError(f"{uri}: no trial_NNNN groups; is this a Brain-to-Text data file?")
    for i, (n, name) in enumerate(numbered):
        if n != i:
            raise DataError(
                f"{uri}: trial numbering has a gap ({group_name(i)} missing, next is {name}); "
                "trials must be numbered trial_0000, trial_0001, ... without gaps"
            )
    return [name for _, name in numbered]
