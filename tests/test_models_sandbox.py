"""The models service's staging folder in /tmp, where a model's owner gets its artifact copy.

In-process and fast: the service runs as root, the folder has a predictable name in the
shared temporary directory, and the copy is handed to the owner's account. Another
account may plant something at that name first, or race the hand-over with links.
"""

from __future__ import annotations

import os
import stat

from aidc.hub.system_users import RunAs
from aidc.models import sandbox

NOBODY = RunAs.of("nobody")


def test_a_folder_or_link_planted_at_the_staging_name_is_replaced(tmp_path):
    root = tmp_path / "aidc-models-x"
    # another account's folder, with a file it hopes to read copies next to
    root.mkdir()
    (root / "planted").write_text("mine")
    os.chown(root, NOBODY.uid, NOBODY.gid)
    sandbox.reset(root)
    st = os.lstat(root)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) == 0o711 and not list(root.iterdir())

    # a link to somewhere else: removed, never followed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rmdir(root)
    root.symlink_to(elsewhere)
    sandbox.stage(tmp_path / "elsewhere", NOBODY, root)  # ensure_root runs first
    assert not root.is_symlink() and os.lstat(root).st_uid == os.geteuid()
    assert not list(elsewhere.iterdir())  # nothing was staged through the link


def test_a_staged_copy_belongs_to_the_owner_and_its_folder_is_private(tmp_path):
    artifact = tmp_path / "saved_model"
    (artifact / "variables").mkdir(parents=True)
    (artifact / "saved_model.pb").write_bytes(b"graph")
    (artifact / "variables" / "variables.index").write_bytes(b"index")
    root = tmp_path / "stage-root"
    staged = sandbox.stage(artifact, NOBODY, root)
    try:
        entries = [staged.directory, *staged.directory.rglob("*")]
        assert len(entries) == 5
        for entry in entries:
            st = os.lstat(entry)
            assert (st.st_uid, st.st_gid) == (NOBODY.uid, NOBODY.gid), entry
        assert stat.S_IMODE(os.lstat(staged.directory).st_mode) == 0o700
        assert (staged.path / "saved_model.pb").read_bytes() == b"graph"
    finally:
        staged.remove()
    assert not staged.directory.exists()


def test_a_file_at_the_staging_name_is_not_a_folder_to_use(tmp_path):
    root = tmp_path / "aidc-models-y"
    root.write_text("not a folder")
    sandbox.ensure_root(root)
    assert root.is_dir() and os.lstat(root).st_uid == os.geteuid()
