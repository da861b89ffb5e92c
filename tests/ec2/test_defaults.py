"""The production values behind the SPOTRUN_* settings that other tests override: with none set,
spotrun keeps its files under ~/.spotrun and retries SSH 4 times from 2 s. (The IMDS address:
tests/remote/test_imds.py; the check-IP service: tests/cloud/test_checkip.py; the boot script has
no switches.)"""

from __future__ import annotations

from pathlib import Path

from ec2 import paths, registry
from ec2.registry import MachineRecord
from ec2.remote.ssh import Machine, backoff_delays


def test_without_settings_files_live_under_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("SPOTRUN_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    record = MachineRecord(name="exp1", host="203.0.113.7", port=22, user="ubuntu", key_path="/k.pem")
    registry.put(record)
    assert registry.get("exp1") == record
    assert (tmp_path / ".spotrun" / "registry.json").is_file()
    assert paths.known_hosts_file("exp1") == tmp_path / ".spotrun" / "known_hosts" / "exp1"
    assert paths.key_file("spotrun") == tmp_path / ".ssh" / "spotrun.pem"
    assert Path.home() == tmp_path


def test_without_settings_ssh_retries_four_times_with_doubling_waits(monkeypatch):
    monkeypatch.delenv("SPOTRUN_SSH_ATTEMPTS", raising=False)
    monkeypatch.delenv("SPOTRUN_SSH_BACKOFF_S", raising=False)
    m = Machine(MachineRecord(name="x", host="h", port=22, user="u", key_path="/k"))
    assert (m.attempts, m.backoff_s) == (4, 2.0)
    assert backoff_delays(m.attempts, m.backoff_s) == [2.0, 4.0, 8.0]
