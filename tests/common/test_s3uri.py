"""S3 URIs are checked by S3's own naming rules before any request, one line per broken rule
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html; keys:
https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html)."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from common.s3uri import check_s3_uri, looks_like_s3, s3_field, s3_problem

RULES = [
    ("s3://", "names no bucket"),
    ("s3:///data", "names no bucket"),
    ("s3://ab/data", "bucket 'ab' is 2 long; S3 bucket names are 3 to 63 characters"),
    ("s3://" + "a" * 64 + "/x", "is 64 long"),
    (
        "s3://Brain-Data/x",
        "bucket 'Brain-Data' has capitals; S3 bucket names are lowercase (did you mean 'brain-data'?)",
    ),
    ("s3://brain_data/x", "bucket 'brain_data' holds '_'; S3 bucket names are lowercase letters, digits"),
    ("s3://my bucket/x", "holds spaces"),
    ("s3://-brain/x", "must start and end with a letter or digit"),
    ("s3://brain./x", "must start and end with a letter or digit"),
    ("s3://brain..data/x", "two dots in a row"),
    ("s3://10.0.0.12/x", "is an IP address"),
    ("s3://xn--brain/x", "starts with 'xn--', which S3 reserves"),
    ("s3://brain-s3alias/x", "ends with '-s3alias', which S3 reserves"),
    ("s3://brain-data/" + "k" * 1025, "prefix is 1025 bytes; S3 keys are at most 1024 bytes"),
    ("s3://brain-data/a\nb", "control character"),
    ("S3://brain-data/x", "is not of the form s3://bucket/prefix"),
    ("s3:/brain-data/x", "is not of the form s3://bucket/prefix"),
]


@pytest.mark.parametrize("uri, says", RULES, ids=[r[1][:30] for r in RULES])
def test_each_rule_is_one_line_naming_it(uri, says):
    with pytest.raises(ConfigError) as e:
        check_s3_uri(uri, "--dest")
    message = str(e.value)
    assert (
        message.startswith(f"--dest {uri!r} ")
        and says in message
        and message.endswith("e.g. s3://my-bucket/data")
    )
    assert "create" not in message  # never advice to make a bucket S3 would refuse


@pytest.mark.parametrize(
    "uri", ["s3://brain-data", "s3://brain-data/", "s3://my.bucket-1/a/b c/é", "s3://abc/x"]
)
def test_valid_uris_pass(uri):
    assert s3_problem(uri) is None
    assert check_s3_uri(uri, "x")[0] == uri[5:].partition("/")[0]


def test_a_local_path_passes_a_config_field_and_an_s3_look_alike_does_not():
    s3_field("../data/hdf5_data_final", "dataset.dataset_dir")
    assert looks_like_s3("S3://x") and looks_like_s3("s3:/x") and not looks_like_s3("data/s3:x")
    with pytest.raises(ConfigError, match="dataset.dataset_dir 'S3://brain/x' is not of the form"):
        s3_field("S3://brain/x", "dataset.dataset_dir")


@pytest.mark.parametrize("uri", ["s3://My-Ckpts/exp1/best.pt", "s3:///exp1/best.pt", "S3://ckpts/exp1"])
def test_evaluate_checks_its_checkpoint_uri_before_any_request(uri, tmp_path):
    from ml.errors import CheckpointError
    from ml.evaluate import resolve_checkpoint

    with pytest.raises(CheckpointError, match=rf"^--checkpoint '{uri}' .*; e\.g\. s3://my-bucket/ckpt"):
        resolve_checkpoint(uri, tmp_path)
