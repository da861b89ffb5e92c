"""spotrun's command line: `fab --list` shows every task with its one-line summary.

Tasks are thin: parse, call ec2/, print, exit codes. They live in tasks/ by stage (lifecycle, remote,
managed run) and are gathered here so `fab` sees one flat list.
"""

from tasks.bench import bench  # noqa: F401
from tasks.data import data_ls, data_push  # noqa: F401
from tasks.detached import stop, watch  # noqa: F401
from tasks.interactive import jupyter, tensorboard, tunnel  # noqa: F401
from tasks.lifecycle import allow_my_ip, cleanup, launch, status, terminate  # noqa: F401
from tasks.managed import run  # noqa: F401
from tasks.preflight import doctor, prices  # noqa: F401
from tasks.rehearse import rehearse, smoke  # noqa: F401
from tasks.remote import adopt, attach, download, forget, gpu, logs, run_cmd, setup, ssh, sync, train  # noqa: F401
from tasks.volumes import volume_delete, volume_mount, volume_move, volume_resize  # noqa: F401
