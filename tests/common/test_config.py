from dataclasses import dataclass, field

import pytest

from common.config import ConfigError, load_config


@dataclass
class Inner:
    size: int = 1
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    rate: float = 0.5
    flag: bool = False
    label: str | None = None


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_loads_types_and_dotted_overrides(tmp_path):
    p = write(tmp_path, "inner:\n  size: 3\nrate: 1\n")
    cfg = load_config(Outer, p, ["inner.names=[a, b]", "flag=true", "rate=0.25"])
    assert cfg == Outer(inner=Inner(size=3, names=["a", "b"]), rate=0.25, flag=True)
    assert isinstance(load_config(Outer, p).rate, float)


def test_unknown_key_is_named(tmp_path):
    p = write(tmp_path, "inner:\n  sise: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key inner\.sise"):
        load_config(Outer, p)


def test_unknown_override_is_named(tmp_path):
    p = write(tmp_path, "rate: 1\n")
    with pytest.raises(ConfigError, match=r"^override 'inner\.bogus=1': unknown key inner\.bogus; "):
        load_config(Outer, p, ["inner.bogus=1"])
    with pytest.raises(ConfigError, match=r"^override 'nope=1': unknown key nope; "):
        load_config(Outer, p, ["nope=1"])


def test_wrong_type_is_named(tmp_path):
    p = write(tmp_path, "inner:\n  size: many\n")
    with pytest.raises(ConfigError, match=r"inner\.size must be an integer"):
        load_config(Outer, p)


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "rate: 1\ninner: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml line \d+: malformed YAML"):
        load_config(Outer, p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_malformed_override():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(Outer, None, ["rate"])


# ---- what a real file can hold: each named as what it is, not blamed on a key read later ----------


@pytest.mark.parametrize(
    "content, says",
    [
        (b"rate: 1\ninner:\n  size: 2\n  size: 3\n", "c.yaml line 4: key 'size' given twice (lines 3 and 4)"),
        (b"rate: 1\nflag: true\nrate: 2\n", "key 'rate' given twice (lines 1 and 3); keep one"),
        (b"", "c.yaml: the file is empty"),
        (b"# all commented out\n", "c.yaml: the file is empty"),
        (b"\x89HDF\r\n\x1a\n\x00\x00\x00", "c.yaml: not a text file"),
        (b"rate: \xe9t\xe9\n", "c.yaml: not a text file"),
    ],
    ids=["duplicate-nested", "duplicate-top", "empty", "only-comments", "binary", "not-utf8"],
)
def test_a_file_that_cannot_be_a_config_is_named_as_such(tmp_path, content, says):
    p = tmp_path / "c.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config(Outer, p)
    assert says in str(e.value) and "\n" not in str(e.value)
