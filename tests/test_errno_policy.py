"""The one errno policy (fusewire/errors.py): how a failure becomes an error reply.

The pure rules are checked directly; then a real mount whose ``lookup`` fails
in every way the policy names (an in-range FUSEError, a negative, zero or too
large errno, an escaping OSError with and without errno, a protocol error, a
plain bug) shows what a caller of stat(2) gets, that each bug is logged with
the request it ended, and that the server keeps serving.
"""

from __future__ import annotations

import errno
import os
import textwrap
from pathlib import Path

import pytest

from fusewire import FUSEError
from fusewire.connection import Config, Connection, encode_error
from fusewire.errors import (
    MAX_ERRNO,
    LocalProtocolError,
    RemoteProtocolError,
    errno_of,
    failure_errno,
    reply_errno,
)
from fusewire.wire import reply_header


@pytest.mark.parametrize(("value", "expected"), [
    (errno.ENOENT, errno.ENOENT), (1, 1), (MAX_ERRNO, MAX_ERRNO),
    (MAX_ERRNO + 1, errno.EIO), (0, errno.EIO), (-errno.ENOENT, errno.EIO),
    (None, errno.EIO), (True, errno.EIO), ("2", errno.EIO), (2.0, errno.EIO),
])
def test_reply_errno(value: object, expected: int) -> None:
    assert reply_errno(value) == expected


@pytest.mark.parametrize(("exc", "expected"), [
    (FUSEError(errno.EACCES), errno.EACCES),
    (FUSEError(-errno.EACCES), errno.EIO),
    (OSError(errno.ENOENT, "gone"), errno.ENOENT),
    (OSError("no errno"), errno.EIO),
    (LocalProtocolError("bad reply", errno.EPROTO), errno.EPROTO),
    (RemoteProtocolError("bad request", errno.EINVAL), errno.EINVAL),
    (ValueError("bug"), errno.EIO),
])
def test_errno_of(exc: BaseException, expected: int) -> None:
    assert errno_of(exc) == expected


def test_failure_errno_marks_bugs() -> None:
    assert failure_errno(LocalProtocolError("x", errno.EPROTO)) == (errno.EPROTO, None)
    err, why = failure_errno(LocalProtocolError("x", 9999))
    assert err == errno.EIO and why is not None and "9999" in why
    err, why = failure_errno(OSError(errno.ENOENT, "gone"), (LocalProtocolError,))
    assert err == errno.EIO and why is not None and "FileNotFoundError" in why
    err, why = failure_errno(ZeroDivisionError("x"))
    assert err == errno.EIO and why is not None


def test_error_reply_bytes() -> None:
    assert reply_header(encode_error(6, errno.ENOENT)) == (16, -errno.ENOENT, 6)
    assert reply_header(encode_error(6, -errno.ENOENT)) == (16, -errno.EIO, 6)
    assert reply_header(encode_error(6, 4096)) == (16, -errno.EIO, 6)
    conn = Connection(Config())
    with pytest.raises(LocalProtocolError):   # a sans-IO caller's own bad errno
        conn.reply_error(2, MAX_ERRNO + 1)
    with pytest.raises(LocalProtocolError):
        conn.reply_error(2, -errno.ENOENT)
    assert reply_header(conn.reply_error(2, MAX_ERRNO)[0]) == (16, -MAX_ERRNO, 2)


FAILING_MODULE = textwrap.dedent('''
    """MemFS whose lookup fails in every way the errno policy names."""
    import errno
    from fusewire import FUSEError
    from fusewire.errors import LocalProtocolError
    from fusewire.examples.memfs import MemFS

    FAILURES = {
        b"eacces": lambda: FUSEError(errno.EACCES),
        b"negative": lambda: FUSEError(-errno.ENOENT),
        b"zero": lambda: FUSEError(0),
        b"large": lambda: FUSEError(600),
        b"oserror": lambda: OSError(errno.ENOENT, "escaped"),
        b"noerrno": lambda: OSError("escaped without errno"),
        b"protocol": lambda: LocalProtocolError("refused", errno.EPROTO),
        b"bug": lambda: KeyError("bug"),
    }

    class FailingFS(MemFS):
        def __init__(self):
            super().__init__(entry_timeout=0.0, attr_timeout=0.0)

        def lookup(self, parent_inode, name, ctx):
            if name in FAILURES:
                raise FAILURES[name]()
            return super().lookup(parent_inode, name, ctx)
''')

#: name -> (errno stat(2) gets, whether the server logs it as a bug)
EXPECTED = {
    "eacces": (errno.EACCES, False),
    "negative": (errno.EIO, True),
    "zero": (errno.EIO, True),
    "large": (errno.EIO, True),
    "oserror": (errno.EIO, True),
    "noerrno": (errno.EIO, True),
    "protocol": (errno.EPROTO, True),
    "bug": (errno.EIO, True),
}


@pytest.mark.fuse
def test_policy_on_a_real_mount(tmp_path: Path, fuse_server_factory) -> None:  # type: ignore[no-untyped-def]
    moddir = tmp_path / "failmod"
    moddir.mkdir()
    (moddir / "fusewire_failing.py").write_text(FAILING_MODULE)
    srv = fuse_server_factory(["fusewire_failing:FailingFS"], tmp_path / "mnt",
                              pythonpath=[str(moddir)])
    mnt = srv.mountpoint
    (mnt / "ok").write_text("fine")
    for name, (want, _bug) in EXPECTED.items():
        try:
            os.stat(mnt / name)
            got = 0
        except OSError as exc:
            got = exc.errno or 0
        assert got == want, f"lookup of {name}: errno {got}, policy says {want}"
        assert (mnt / "ok").read_text() == "fine"      # the next request is served
    assert srv.proc.poll() is None, "the server died"
    log = srv.stderr()
    for name, (_want, bug) in EXPECTED.items():
        if bug and name != "protocol":
            assert "LOOKUP unique=0x" in log and "FailingFS.lookup" in log, log
    for what in ("errno -2 outside 1..511", "errno 0 outside", "errno 600 outside",
                 "escaped without errno", "KeyError", "refused"):
        assert what in log, f"{what!r} not logged:\n{log}"
