"""The run folder and its records cannot be planted: folder ownership and mode, links never followed."""

from __future__ import annotations

import os

import pytest

from labctl.actors import labkey, runstate
from labctl.actors.errors import NotAuthorised, RunDirUnsafe


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    path = tmp_path / "run"
    monkeypatch.setenv("LABCTL_RUN_DIR", str(path))
    return path


def test_the_run_folder_is_made_private(run_dir):
    assert runstate.base_dir() == run_dir
    assert run_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722, 0o702])
def test_a_run_folder_others_can_write_is_refused(run_dir, mode):
    run_dir.mkdir()
    run_dir.chmod(mode)
    with pytest.raises(RunDirUnsafe, match=f"mode {mode:04o}"):
        runstate.base_dir()


def test_a_run_folder_of_another_user_is_refused(run_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder away")
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, 65534, 65534)
    with pytest.raises(RunDirUnsafe, match="belongs to uid 65534"):
        runstate.base_dir()


def test_a_run_folder_that_is_a_link_is_refused(run_dir, tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    run_dir.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunDirUnsafe, match="not a folder"):
        runstate.base_dir()


def test_a_link_planted_at_a_record_is_replaced_not_followed(run_dir, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    runstate.base_dir()
    (run_dir / "lab-1999.json").symlink_to(victim)
    assert runstate.read(1999) is None  # a link is not read either
    runstate.write(runstate.LabRecord(port=1999, lab="x", config="", log_dir="", keeper_pid=1))
    assert victim.read_text() == "precious"
    assert not (run_dir / "lab-1999.json").is_symlink()
    assert runstate.read(1999).lab == "x"
    assert (run_dir / "lab-1999.json").stat().st_mode & 0o777 == 0o600


def test_a_link_planted_at_the_key_is_replaced_not_followed(run_dir, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    runstate.base_dir()
    labkey.path_for(1999).symlink_to(victim)
    with pytest.raises(NotAuthorised):
        labkey.for_lab(1999)
    key = labkey.generate()
    labkey.install(1999, key)
    assert victim.read_text() == "precious"
    assert labkey.for_lab(1999) == key
    assert labkey.path_for(1999).stat().st_mode & 0o777 == 0o600


def test_a_record_names_only_the_processes_of_its_own_session(run_dir):
    # A record planted by hand cannot name a stranger: only members of the admin's session count,
    # and a live process whose pid is that session's number means the session is gone.
    record = runstate.LabRecord(port=1999, lab="x", config="", log_dir="", keeper_pid=1, admin_pid=os.getpid(),
                                session=os.getpid())
    assert record.lab_processes() == []
    record = runstate.LabRecord(port=1999, lab="x", config="", log_dir="", keeper_pid=1, admin_pid=1, session=0)
    assert record.lab_processes() == []


def test_key_files_must_be_private_and_hold_a_key(tmp_path):
    path = tmp_path / "lab.key"
    labkey.write_key_file(path, b"k" * 32)
    assert labkey.read_key_file(path) == b"k" * 32
    path.chmod(0o640)
    with pytest.raises(NotAuthorised, match="can be read by others"):
        labkey.read_key_file(path)
    path.chmod(0o600)
    path.write_text("not hex")
    with pytest.raises(NotAuthorised, match="does not hold a key"):
        labkey.read_key_file(path)
    path.write_text("abcd")
    with pytest.raises(NotAuthorised, match="16 to 64"):
        labkey.read_key_file(path)
