"""`fab data-push` and `fab data-ls`: put a Brain-to-Text dataset folder in S3, and see what is there.
The logic lives in ec2/cloud/datasets.py."""

from __future__ import annotations

import sys

from invoke import task
from invoke.exceptions import Exit

from ec2.cloud import account
from tasks.edge import aws_config, edge, s3_uri


def _s3(config, set_):
    return account.client(aws_config(config, set_), "s3")


class _ByteBar:
    """The upload's tqdm bar in bytes, made when push knows the total, closed at the end."""

    def __init__(self):
        self.bar = None

    def __call__(self, total: int, initial: int):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc="upload"
        )
        return self.bar.update

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@task(name="data-push", iterable=["set_"])
@edge(checks={"dest": s3_uri})
def data_push(c, src, dest, force=False, config=None, set_=None):
    """Upload a dataset folder (<src>/<session>/data_*.hdf5) to s3://bucket/prefix; skips what is there.
    A different file already at a key is replaced only with --force."""
    from ec2.cloud import datasets

    s3 = _s3(config, set_)
    bar = _ByteBar()
    try:
        result = datasets.push(s3, src, dest, progress=bar, force=force)
    except KeyboardInterrupt:
        bar.close()
        print(
            "interrupted: no partial object was left; run the same command again to resume "
            "(files already uploaded are skipped)",
            file=sys.stderr,
        )
        raise Exit(code=130) from None
    finally:
        bar.close()
    print(result.line())
    if result.indexes_written:
        print(
            f"stored {result.indexes_written} trial indexes beside the files (one small read per file "
            "on a new instance)"
        )


@task(name="data-ls", iterable=["set_"])
@edge
def data_ls(c, uri, config=None, set_=None):
    """Show a dataset in S3: sessions, files and sizes, and what is missing."""
    from ec2.cloud import datasets

    s3 = _s3(config, set_)
    for line in datasets.listing_lines(uri, datasets.listing(s3, uri)):
        print(line)
