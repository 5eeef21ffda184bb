"""Mounting and unmounting FUSE filesystems without libfuse.

Two ways to get a ``/dev/fuse`` file descriptor that is attached to a mount:

* **Directly** (the caller is root and did not ask for ``auto_unmount``):
  open ``/dev/fuse`` and call ``mount(2)`` with a data string of the form
  ``fd=N,rootmode=40000,user_id=U,group_id=G[,kernel options]``.
* **Through fusermount3** (the caller is not root, or asked for
  ``auto_unmount``): run the setuid helper ``fusermount3 -o OPTS -- MOUNTPOINT``
  with ``_FUSE_COMMFD`` naming one end of a Unix socket pair.  The helper does
  the mount and sends the ``/dev/fuse`` fd back with ``SCM_RIGHTS``.

By default the kernel queues FUSE_INIT on the fd and ``mount(2)`` returns at
once, so the caller reads INIT afterwards (with a buffer of at least 8192
bytes).

``auto_unmount``
    fusermount3 stays alive after sending the fd and waits until our end of
    the socket pair is closed; then it unmounts (lazily).  This module keeps
    that socket and the :class:`subprocess.Popen` object in a module-level
    registry keyed by the returned fd.  The socket is close-on-exec, so the
    mount goes away when this process exits or dies for any reason (a child
    created with a bare ``fork()`` shares the socket and delays that until it
    exits too).  To end such a mount while the process keeps running, call
    :func:`release` (closes the fd and the socket, and reaps the helper) or
    :func:`unmount`.  A plain ``os.close(fd)`` leaves the helper waiting.
    fusermount3 older than 3.15 cannot auto-unmount a *user's* mount unless
    ``allow_other`` is set (its check runs as root and gets EACCES);
    :func:`mount` warns with RuntimeWarning in that case.

Nothing here reads or answers requests; see the server for that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import functools
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

__all__ = [
    "FUSECTL_DIR",
    "FUSE_DEV_IOC_CLONE",
    "FUSE_DEV_IOC_SYNC_INIT",
    "MNT_DETACH",
    "MS_DIRSYNC",
    "MS_NOATIME",
    "MS_NODEV",
    "MS_NODIRATIME",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_RDONLY",
    "MS_RELATIME",
    "MS_STRICTATIME",
    "MS_SYNCHRONOUS",
    "MountOptions",
    "abort_connection",
    "clone_fd",
    "dev_fuse_problem",
    "connection_id",
    "fusermount_path",
    "is_mounted",
    "known_options",
    "mount",
    "parse_options",
    "release",
    "sync_init_supported",
    "unmount",
]

# mount(2) flags (linux/mount.h).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

# umount2(2) flag.
MNT_DETACH = 0x2

# /dev/fuse ioctls (protocol.md section 11).
FUSE_DEV_IOC_CLONE = 0x8004E500
FUSE_DEV_IOC_SYNC_INIT = 0xE503

FUSECTL_DIR = "/sys/fs/fuse/connections"

_DEV_FUSE = "/dev/fuse"

# name -> (bits cleared first, bits set afterwards).  Later options win.
_ATIME_BITS = MS_NOATIME | MS_RELATIME | MS_STRICTATIME
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (0, MS_RDONLY),
    "rw": (MS_RDONLY, 0),
    "nosuid": (0, MS_NOSUID),
    "suid": (MS_NOSUID, 0),
    "nodev": (0, MS_NODEV),
    "dev": (MS_NODEV, 0),
    "noexec": (0, MS_NOEXEC),
    "exec": (MS_NOEXEC, 0),
    "sync": (0, MS_SYNCHRONOUS),
    "async": (MS_SYNCHRONOUS, 0),
    "dirsync": (0, MS_DIRSYNC),
    "noatime": (_ATIME_BITS, MS_NOATIME),
    "atime": (MS_NOATIME, 0),
    "relatime": (_ATIME_BITS, MS_RELATIME),
    "norelatime": (MS_RELATIME, 0),
    "strictatime": (_ATIME_BITS, MS_STRICTATIME),
    "nostrictatime": (MS_STRICTATIME, 0),
    "nodiratime": (0, MS_NODIRATIME),
    "diratime": (MS_NODIRATIME, 0),
}

# Set flags, in the order they are spelled for fusermount3.
_FLAG_NAMES: tuple[tuple[int, str], ...] = (
    (MS_RDONLY, "ro"),
    (MS_NOSUID, "nosuid"),
    (MS_NODEV, "nodev"),
    (MS_NOEXEC, "noexec"),
    (MS_SYNCHRONOUS, "sync"),
    (MS_DIRSYNC, "dirsync"),
    (MS_NOATIME, "noatime"),
    (MS_NODIRATIME, "nodiratime"),
    (MS_RELATIME, "relatime"),
    (MS_STRICTATIME, "strictatime"),
)

# Options the kernel's fuse parser understands (besides the four mount() adds).
_KERNEL_FLAG_OPTIONS = frozenset({"allow_other", "default_permissions"})
_KERNEL_INT_OPTIONS = frozenset({"max_read", "blksize"})
_KERNEL_STR_OPTIONS = frozenset({"context", "fscontext", "defcontext", "rootcontext"})
_RESERVED_OPTIONS = frozenset({"fd", "rootmode", "user_id", "group_id"})
_NO_VALUE_OPTIONS = frozenset(_FLAG_OPTIONS) | _KERNEL_FLAG_OPTIONS | {"auto_unmount", "allow_root"}
_STR_VALUE_OPTIONS = frozenset({"fsname", "subtype"}) | _KERNEL_STR_OPTIONS


@dataclass(frozen=True)
class MountOptions:
    """Mount options, split by who consumes them.

    Build one with :func:`parse_options`.

    Attributes:
        kernel: options for the ``mount(2)`` data string, e.g. ``allow_other``,
            ``default_permissions``, ``max_read=N``, ``blksize=N``.  Never
            ``fd``/``rootmode``/``user_id``/``group_id``: :func:`mount` adds those.
        flags: ``MS_*`` mount flags.
        fsname: the mount source shown in ``/proc/mounts``.
        subtype: if set, the filesystem type is ``fuse.<subtype>``.
        auto_unmount: mount through fusermount3 and let it unmount when this
            process closes its end of the control socket (see module docs).
        extra: every other option (``entry_timeout=1.5``, ``source=...``), name
            to value (``""`` for options without ``=``), for the caller.
    """

    kernel: tuple[str, ...] = ()
    flags: int = 0
    fsname: str = "fusewire"
    subtype: str | None = None
    auto_unmount: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def _split_option_list(text: str) -> Iterator[str]:
    """Split ``a,b=c`` at commas; a backslash makes the next character literal."""
    item: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            item.append(next(chars, "\\"))
        elif ch == ",":
            yield "".join(item)
            item = []
        else:
            item.append(ch)
    yield "".join(item)


def _option_lists(opts: str | Sequence[str]) -> Iterator[str]:
    """Yield the comma-separated option lists in libfuse-style arguments."""
    if isinstance(opts, str):
        text = opts.strip()
        if not text.startswith("-"):
            yield opts
            return
        args: Sequence[str] = text.split()
    else:
        args = opts
    pending_o = False
    for arg in args:
        if pending_o:
            yield arg
            pending_o = False
        elif arg == "-o":
            pending_o = True
        elif arg.startswith("-o"):
            yield arg[2:]
        elif arg.startswith("-"):
            raise ValueError(f"unsupported argument {arg!r}: only -o options are accepted")
        else:
            yield arg
    if pending_o:
        raise ValueError("-o without an option list")


def parse_options(
    opts: str | Sequence[str] | None,
    *,
    fsname: str = "fusewire",
    subtype: str | None = None,
) -> MountOptions:
    """Parse libfuse-style mount options into :class:`MountOptions`.

    ``opts`` may be ``None``, a comma-separated list (``"ro,allow_other"``), a
    string starting with ``-`` (``"-o ro -o fsname=x"``; whitespace splits
    arguments here), or a sequence of arguments (``["-o", "ro", "-oallow_other",
    "max_read=65536"]``).  A backslash escapes a comma or backslash inside a
    value.  Later options override earlier ones; ``fsname=``/``subtype=`` in
    ``opts`` override the keyword arguments.

    Flags start as ``nosuid,nodev`` when the caller is not root (fusermount3
    enforces those for users anyway) and as nothing for root.  ``noatime``,
    ``relatime`` and ``strictatime`` exclude each other.  ``allow_root`` puts
    ``allow_other`` into the kernel options and keeps ``allow_root`` in
    ``extra`` so the server can refuse everybody but the owner and root.

    Raises:
        ValueError: a reserved option (fd, rootmode, user_id, group_id), a
            value where none is allowed or a missing/invalid one, a NUL byte,
            ``allow_other`` together with ``allow_root``, or a non ``-o`` switch.
    """
    flags = 0 if os.geteuid() == 0 else MS_NOSUID | MS_NODEV
    kernel: dict[str, str] = {}
    extra: dict[str, str] = {}
    auto_unmount = False
    allow_other = allow_root = False
    lists: Iterator[str] = iter(()) if opts is None else _option_lists(opts)
    for option_list in lists:
        for item in _split_option_list(option_list):
            if not item:
                continue
            if "\0" in item:
                raise ValueError(f"NUL byte in mount option {item!r}")
            name, has_value, value = item.partition("=")
            if has_value and name in _NO_VALUE_OPTIONS:
                raise ValueError(f"mount option {name!r} takes no value")
            if not value and name in _STR_VALUE_OPTIONS:
                raise ValueError(f"mount option {name!r} needs a value")
            if name in _FLAG_OPTIONS:
                clear, set_ = _FLAG_OPTIONS[name]
                flags = (flags & ~clear) | set_
            elif name in _RESERVED_OPTIONS:
                raise ValueError(f"mount option {name!r} is set by mount() and cannot be given")
            elif name == "fsname":
                fsname = value
            elif name == "subtype":
                subtype = value
            elif name == "auto_unmount":
                auto_unmount = True
            elif name == "allow_root":
                allow_root = True
                kernel["allow_other"] = "allow_other"
                extra["allow_root"] = ""
            elif name in _KERNEL_FLAG_OPTIONS:
                allow_other = allow_other or name == "allow_other"
                kernel[name] = name
            elif name in _KERNEL_INT_OPTIONS:
                if not (value.isascii() and value.isdigit()):
                    raise ValueError(f"mount option {name!r} needs a decimal number, not {value!r}")
                kernel[name] = f"{name}={int(value)}"
            elif name in _KERNEL_STR_OPTIONS:
                kernel[name] = f"{name}={value}"
            else:
                extra[name] = value
    if allow_other and allow_root:
        raise ValueError("allow_other and allow_root are mutually exclusive")
    if not fsname:
        raise ValueError("fsname must not be empty")
    if "\0" in fsname or (subtype is not None and "\0" in subtype):
        raise ValueError("NUL byte in fsname or subtype")
    return MountOptions(
        kernel=tuple(kernel.values()),
        flags=flags,
        fsname=fsname,
        subtype=subtype or None,
        auto_unmount=auto_unmount,
        extra=extra,
    )


def known_options() -> tuple[str, ...]:
    """Every option name :func:`parse_options` itself understands (not ``extra``).

    The four that :func:`mount` sets itself (fd, rootmode, user_id, group_id)
    are not among them.
    """
    return tuple(sorted(_NO_VALUE_OPTIONS | _STR_VALUE_OPTIONS | _KERNEL_INT_OPTIONS))


# --------------------------------------------------------------------------
# libc, fusermount3, error helpers


_libc_handle: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    """Load libc once, with errno capture, and declare mount/umount2."""
    global _libc_handle
    if _libc_handle is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        lib.mount.restype = ctypes.c_int
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.umount2.restype = ctypes.c_int
        _libc_handle = lib
    return _libc_handle


def _sys_mount(source: str, target: str, fstype: str, flags: int, data: str | None) -> None:
    """Call mount(2); raise OSError(errno) on failure."""
    res = _libc().mount(
        os.fsencode(source),
        os.fsencode(target),
        fstype.encode(),
        flags,
        None if data is None else os.fsencode(data),
    )
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount(2) of {fstype} failed: {os.strerror(err)}", target)


def _sys_umount2(target: str, flags: int) -> None:
    """Call umount2(2); raise OSError(errno) on failure."""
    if _libc().umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount2(2) failed: {os.strerror(err)}", target)


def fusermount_path() -> str:
    """Return the path of ``fusermount3``.

    Looks in ``$PATH`` first, then in the usual system directories (a setuid
    program or a service may run with an empty ``$PATH``).

    Raises:
        FileNotFoundError: fusermount3 is not installed.
    """
    found = shutil.which("fusermount3")
    if found is None:
        for candidate in ("/usr/bin/fusermount3", "/bin/fusermount3", "/usr/local/bin/fusermount3"):
            if os.access(candidate, os.X_OK):
                found = candidate
                break
    if found is None:
        raise FileNotFoundError(
            errno.ENOENT,
            "fusermount3 not found; unprivileged and auto_unmount mounts need it "
            "(on Debian: apt-get install fuse3)",
            "fusermount3",
        )
    return found


@functools.lru_cache(maxsize=8)
def _fusermount_version(path: str) -> tuple[int, ...] | None:
    """The version ``path -V`` reports, e.g. (3, 14, 0); None if unknown."""
    try:
        proc = subprocess.run(
            [path, "-V"],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"version:?\s*(\d+(?:\.\d+)*)", proc.stdout + proc.stderr)
    return tuple(int(part) for part in found.group(1).split(".")) if found else None


_STRERRORS: tuple[tuple[str, int], ...] = tuple(
    sorted(
        ((os.strerror(code), code) for code in errno.errorcode),
        key=lambda pair: -len(pair[0]),
    )
)


def _errno_from_message(message: str) -> int:
    """Guess the errno behind a fusermount3 error message.

    fusermount3 reports failures as text ending in ``strerror(errno)``; the
    last known strerror text wins.  Policy refusals without one map to EPERM,
    anything else to EIO.
    """
    best: tuple[int, int] | None = None  # (position, errno)
    for text, code in _STRERRORS:
        pos = message.rfind(text)
        if pos >= 0 and (best is None or pos > best[0]):
            best = (pos, code)
    if best is not None:
        return best[1]
    lowered = message.lower()
    if any(word in lowered for word in ("not allowed", "permission", "unsafe", "access")):
        return errno.EPERM
    if "unknown option" in lowered or "invalid" in lowered:
        return errno.EINVAL
    return errno.EIO


def _fusermount_error(action: str, returncode: int, stderr: bytes, path: str) -> OSError:
    """Build the OSError for a failed fusermount3 run."""
    text = stderr.decode(errors="replace").strip() or "(no output)"
    code = _errno_from_message(text)
    return OSError(code, f"fusermount3 {action} failed (exit status {returncode}): {text}", path)


def _escape_option(value: str) -> str:
    """Escape backslashes and commas for fusermount3's option parser."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _fusermount_options(options: MountOptions) -> str:
    """Spell ``options`` as one ``-o`` argument for fusermount3.

    fusermount3 itself defaults to ``nosuid,nodev``, so ``suid``/``dev`` are
    spelled out when those flags are clear (fusermount3 refuses them for
    users, which is the right answer to a user asking for them).
    """
    parts = [f"fsname={_escape_option(options.fsname)}"]
    if options.subtype:
        parts.append(f"subtype={_escape_option(options.subtype)}")
    parts.extend(options.kernel)
    parts.extend(name for bit, name in _FLAG_NAMES if options.flags & bit)
    if not options.flags & MS_NOSUID:
        parts.append("suid")
    if not options.flags & MS_NODEV:
        parts.append("dev")
    if options.auto_unmount:
        parts.append("auto_unmount")
    return ",".join(parts)


# --------------------------------------------------------------------------
# auto_unmount registry


@dataclass
class _AutoUnmountHelper:
    """A fusermount3 process waiting for ``sock`` to close before it unmounts.

    ``mountpoint`` is the canonical path (:func:`_resolve_path`).
    """

    sock: socket.socket
    proc: subprocess.Popen[bytes]
    mountpoint: str

    def finish(self, timeout: float) -> None:
        """Close our end of the socket and reap the helper if it exits in time."""
        self.sock.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass  # subprocess reaps it later; the unmount may still happen


_helpers: dict[int, _AutoUnmountHelper] = {}
_helpers_lock = threading.Lock()


def _register_helper(fd: int, helper: _AutoUnmountHelper) -> None:
    """Keep ``helper`` alive for as long as ``fd`` is in use."""
    with _helpers_lock:
        stale = _helpers.pop(fd, None)
        _helpers[fd] = helper
    if stale is not None:
        # The fd number was closed with os.close() and reused: that mount's
        # owner is gone, so let its helper unmount it.
        stale.finish(0)


def release(fd: int, *, timeout: float = 5.0) -> None:
    """Close a fd returned by :func:`mount` and drop its ``auto_unmount`` helper.

    For an ``auto_unmount`` mount this closes our end of the control socket,
    so fusermount3 unmounts (lazily), and waits up to ``timeout`` seconds for
    it to finish.  For other fds it is just ``os.close(fd)``; the mount stays.
    """
    with _helpers_lock:
        helper = _helpers.pop(fd, None)
    os.close(fd)
    if helper is not None:
        helper.finish(timeout)


def _drop_helpers_for(mountpoint: str, timeout: float) -> None:
    """After an unmount, let the helpers of that mountpoint exit."""
    with _helpers_lock:
        fds = [fd for fd, h in _helpers.items() if h.mountpoint == mountpoint]
        done = [_helpers.pop(fd) for fd in fds]
    for helper in done:
        helper.finish(timeout)


# --------------------------------------------------------------------------
# mount / unmount


def _open_dev_fuse() -> int:
    """Open a new, unattached ``/dev/fuse`` fd (O_RDWR | O_CLOEXEC)."""
    return os.open(_DEV_FUSE, os.O_RDWR | os.O_CLOEXEC)


def mount(mountpoint: str, options: MountOptions) -> int:
    """Mount a FUSE filesystem at ``mountpoint``; return its ``/dev/fuse`` fd.

    The fd is ``O_RDWR | O_CLOEXEC`` and belongs to the caller; the kernel has
    queued FUSE_INIT on it (unique 2).  As root without ``auto_unmount`` this
    calls ``mount(2)`` directly (source ``fsname``, type ``fuse`` or
    ``fuse.<subtype>``, data ``fd=N,rootmode=<octal file type of the
    mountpoint>,user_id=<uid>,group_id=<gid>`` plus ``options.kernel``; the
    ids are the real ones, as fusermount3 uses).  Otherwise it runs
    fusermount3 and receives the fd over a socket pair; with
    ``auto_unmount`` see the module docs and :func:`release`.

    Raises:
        OSError: with the failing errno (ENOENT for a missing mountpoint,
            EPERM/EACCES for refusals, EINVAL for bad options ...); for
            fusermount3 failures the message includes its stderr.
        FileNotFoundError: fusermount3 is needed but not installed.
    """
    mountpoint = os.path.abspath(mountpoint)
    try:
        st = os.stat(mountpoint)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot use mountpoint: {os.strerror(exc.errno or 0)}", mountpoint
        ) from None
    if os.geteuid() == 0 and not options.auto_unmount:
        return _mount_direct(mountpoint, st.st_mode, options)
    return _mount_fusermount(mountpoint, options)


def _mount_direct(mountpoint: str, mode: int, options: MountOptions) -> int:
    """Root path: open /dev/fuse and call mount(2)."""
    fd = _open_dev_fuse()
    try:
        data = ",".join(
            (
                f"fd={fd}",
                f"rootmode={stat.S_IFMT(mode):o}",
                f"user_id={os.getuid()}",
                f"group_id={os.getgid()}",
                *options.kernel,
            )
        )
        fstype = f"fuse.{options.subtype}" if options.subtype else "fuse"
        _sys_mount(options.fsname, mountpoint, fstype, options.flags, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _receive_fd(sock: socket.socket) -> int | None:
    """Receive one fd sent with SCM_RIGHTS; None if the peer closed first.

    ``socket.recv_fds`` would do, but CPython ignores its ``flags`` argument,
    so MSG_CMSG_CLOEXEC (no window in which the fd lacks close-on-exec) needs
    ``recvmsg`` itself.
    """
    int_size = struct.calcsize("i")
    _msg, ancdata, msg_flags, _addr = sock.recvmsg(
        1, socket.CMSG_SPACE(4 * int_size), socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            count = len(payload) // int_size
            fds.extend(struct.unpack(f"{count}i", payload[: count * int_size]))
    if len(fds) == 1 and not msg_flags & socket.MSG_CTRUNC:
        return fds[0]
    for extra_fd in fds:
        os.close(extra_fd)
    return None


def _mount_fusermount(mountpoint: str, options: MountOptions) -> int:
    """fusermount3 path: the helper mounts and passes the fd back."""
    exe = fusermount_path()
    if options.auto_unmount and os.getuid() != 0 and "allow_other" not in options.kernel:
        version = _fusermount_version(exe)
        if version is not None and version < (3, 15):
            warnings.warn(
                f"fusermount3 {'.'.join(map(str, version))} cannot auto-unmount a user's "
                "mount without allow_other (fixed in fuse 3.15); this mount will stay "
                "after the process exits",
                RuntimeWarning,
                stacklevel=3,
            )
    argv = [exe, "-o", _fusermount_options(options), "--", mountpoint]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
    with ours, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        try:
            fd = _receive_fd(ours)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if options.auto_unmount and fd is not None:
            helper = _AutoUnmountHelper(ours.dup(), proc, _resolve_path(mountpoint))
            helper.sock.set_inheritable(False)
            _register_helper(fd, helper)
            return fd
        returncode = proc.wait()
        if fd is not None and returncode == 0:
            return fd
        if fd is not None:
            os.close(fd)
        err.seek(0)
        raise _fusermount_error("mount", returncode, err.read(), mountpoint)


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount the FUSE filesystem at ``mountpoint``.

    As root: ``umount2(mountpoint, MNT_DETACH if lazy else 0)``.  Otherwise:
    ``fusermount3 -u [-z] -- mountpoint``.  An ``auto_unmount`` helper for
    that mountpoint is told to exit afterwards.  The ``/dev/fuse`` fd stays
    open (reads now fail with ENODEV); close it with :func:`release`.

    Raises:
        OSError: e.g. EINVAL (not a mount point), EBUSY (in use; try lazy),
            EPERM; for fusermount3 failures the message includes its stderr.
    """
    mountpoint = os.path.abspath(mountpoint)
    if os.geteuid() == 0:
        _sys_umount2(mountpoint, MNT_DETACH if lazy else 0)
    else:
        argv = [fusermount_path(), "-u", *(["-z"] if lazy else []), "--", mountpoint]
        proc = subprocess.run(
            argv,
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if proc.returncode != 0:
            raise _fusermount_error("unmount", proc.returncode, proc.stderr, mountpoint)
    _drop_helpers_for(_resolve_path(mountpoint), timeout=5.0)


# --------------------------------------------------------------------------
# /proc/self/mountinfo


@dataclass(frozen=True)
class _MountEntry:
    """One line of /proc/self/mountinfo."""

    major: int
    minor: int
    mountpoint: str
    mount_options: str
    fstype: str
    source: str
    super_options: str


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(field_: bytes) -> str:
    r"""Undo mountinfo's octal escapes (``\040`` space, ``\134`` backslash ...)."""
    raw = _OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field_)
    return os.fsdecode(raw)


def _fuse_mounts() -> list[_MountEntry]:
    """All fuse, fuse.*, fuseblk and fuseblk.* mounts, in mountinfo order."""
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().splitlines()
    entries = []
    for line in lines:
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            fstype = fields[sep + 1].decode()
            if fstype.split(".", 1)[0] not in ("fuse", "fuseblk"):
                continue
            major, minor = (int(n) for n in fields[2].split(b":"))
            entries.append(
                _MountEntry(
                    major=major,
                    minor=minor,
                    mountpoint=_unescape(fields[4]),
                    mount_options=fields[5].decode(),
                    fstype=fstype,
                    source=_unescape(fields[sep + 2]),
                    super_options=_unescape(fields[sep + 3]),
                )
            )
        except (ValueError, IndexError, UnicodeDecodeError):
            continue
    return entries


def _resolve_path(path: str) -> str:
    """Canonical absolute path, without stat()ing the last component.

    Like ``os.path.realpath`` except that the final component is only
    ``readlink()``ed: stat() on the root of a FUSE mount whose server has not
    answered INIT (or has hung) would block.  libfuse resolves mountpoints
    the same way.
    """
    if not os.path.isabs(path):
        path = os.path.join(os.getcwd(), path)
    for _ in range(40):  # the kernel's limit on nested symlinks
        parent, name = os.path.split(path.rstrip("/") or "/")
        if name in ("", ".", ".."):
            return os.path.realpath(path)
        path = os.path.join(os.path.realpath(parent), name)
        try:
            target = os.readlink(path)
        except OSError:
            return path
        path = os.path.join(os.path.dirname(path), target)
    return path


def _find_fuse_mount(mountpoint: str) -> _MountEntry | None:
    """The topmost FUSE mount at ``mountpoint``, or None."""
    wanted = _resolve_path(mountpoint)
    found = None
    for entry in _fuse_mounts():
        if entry.mountpoint == wanted:
            found = entry
    return found


def is_mounted(mountpoint: str) -> bool:
    """Return True if a FUSE filesystem is mounted at ``mountpoint``.

    Reads ``/proc/self/mountinfo`` (so it never blocks on an unresponsive
    server), considers only ``fuse``/``fuseblk`` types and their subtypes,
    and compares canonical paths (see :func:`_resolve_path`).
    """
    return _find_fuse_mount(mountpoint) is not None


# --------------------------------------------------------------------------
# ioctls and the control filesystem


def clone_fd(fd: int) -> int:
    """Return a new ``/dev/fuse`` fd attached to the same connection as ``fd``.

    Opens ``/dev/fuse`` and issues FUSE_DEV_IOC_CLONE with ``fd`` as the u32
    argument.  The clone has its own processing list: a request must be
    answered through the fd that read it.

    Raises:
        OSError: EPERM (6.18; EINVAL on some kernels) if ``fd`` is not
            attached to a connection, EBADF if it is not open ...
    """
    new_fd = _open_dev_fuse()
    try:
        fcntl.ioctl(new_fd, FUSE_DEV_IOC_CLONE, struct.pack("=I", fd))
    except OSError as exc:
        os.close(new_fd)
        code = exc.errno or errno.EIO
        raise OSError(
            code, f"FUSE_DEV_IOC_CLONE from fd {fd} failed: {os.strerror(code)}"
        ) from None
    return new_fd


def dev_fuse_problem() -> str | None:
    """Why /dev/fuse is unusable by this process (a reason to skip a test), or None."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open /dev/fuse O_RDWR: {exc}"
    os.close(fd)
    return None


def sync_init_supported() -> bool:
    """Return True if the kernel has FUSE_DEV_IOC_SYNC_INIT (Linux 6.18+).

    Probes the ioctl on a fresh ``/dev/fuse`` fd, which is then closed.

    Raises:
        OSError: ``/dev/fuse`` cannot be opened, or an unexpected errno.
    """
    fd = _open_dev_fuse()
    try:
        fcntl.ioctl(fd, FUSE_DEV_IOC_SYNC_INIT)
    except OSError as exc:
        if exc.errno == errno.ENOTTY:
            return False
        raise
    finally:
        os.close(fd)
    return True


def connection_id(mountpoint: str) -> int:
    """Return the FUSE connection id of ``mountpoint``.

    That is the minor number of the mount's ``st_dev`` and the directory name
    under ``/sys/fs/fuse/connections``.  It is read from the ``major:minor``
    field of ``/proc/self/mountinfo`` (the same value stat() would give)
    because stat() on the mount root blocks until the server answers.

    Raises:
        OSError: EINVAL if no FUSE filesystem is mounted there.
    """
    entry = _find_fuse_mount(mountpoint)
    if entry is None:
        raise OSError(errno.EINVAL, "no FUSE filesystem mounted here", mountpoint)
    return entry.minor


def _fusectl_mounted() -> bool:
    """Return True if the fusectl filesystem is mounted on FUSECTL_DIR."""
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            try:
                sep = fields.index(b"-", 6)
            except ValueError:
                continue
            if fields[sep + 1] == b"fusectl" and _unescape(fields[4]) == FUSECTL_DIR:
                return True
    return False


def abort_connection(mountpoint: str) -> None:
    """Abort the FUSE connection of ``mountpoint`` through fusectl.

    Writes to ``/sys/fs/fuse/connections/<id>/abort``.  If fusectl is not
    mounted there, it is mounted for the write and unmounted again (root
    only).  Afterwards pending and new requests fail, ``read()`` on the
    server's fd fails with ENODEV, and the mount stays until unmounted.

    Raises:
        OSError: EINVAL if not a FUSE mount; EPERM if fusectl is not mounted
            and the caller is not root; ENOENT if the connection is gone.
    """
    conn = connection_id(mountpoint)
    mounted_here = False
    if not _fusectl_mounted():
        if os.geteuid() != 0:
            raise OSError(
                errno.EPERM,
                f"fusectl is not mounted on {FUSECTL_DIR} and only root can mount it",
                FUSECTL_DIR,
            )
        _sys_mount("fusectl", FUSECTL_DIR, "fusectl", 0, None)
        mounted_here = True
    try:
        with open(os.path.join(FUSECTL_DIR, str(conn), "abort"), "wb", buffering=0) as f:
            f.write(b"1")
    finally:
        if mounted_here:
            try:
                _sys_umount2(FUSECTL_DIR, 0)
            except OSError:
                pass  # busy: someone else is using it now, leave it mounted
