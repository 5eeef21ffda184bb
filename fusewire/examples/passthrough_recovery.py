"""Passthrough's recovery half: stable handles, crash recovery, several processes.

Mixed into :class:`~fusewire.examples.passthrough.Passthrough`: handles that
outlive the server (``name_to_handle_at``/``open_by_handle_at``), the
successor's reopening of nodes and open files at the very same numbers, and
serving with several processes that share a node log.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import resource
import stat
import struct
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from fusewire.errors import UsageError
from fusewire.examples.passthrough_libc import (
    _AT_EMPTY_PATH,
    _MAX_HANDLE_SZ,
    _name_to_handle_at,
    _open_by_handle_at,
    _os_error,
)
from fusewire.examples.passthrough_nodes import (
    _ALLOC_BASE,
    _HANDLE_HEAD,
    _HANDLE_MAGIC,
    _REOPEN_STRIP,
    _ROOT,
    PassthroughState,
    _check_name,
    _DirHandle,
    _errmap,
    _Node,
    _proc,
)
from fusewire.recovery_api import HandleRecovery
from fusewire.types import FUSEError

if TYPE_CHECKING:
    from fusewire.operations import Notifier
    from fusewire.server.processes import SharedTable


class PassthroughRecovery(PassthroughState, HandleRecovery):
    """Stable handles, crash recovery and multi-process serving of a passthrough."""

    notifier: Notifier | None = None

    # -- stable identity -----------------------------------------------------------

    @staticmethod
    def _mount_id(fd: int) -> int:
        buf = ctypes.create_string_buffer(8 + _MAX_HANDLE_SZ)
        struct.pack_into("<I", buf, 0, _MAX_HANDLE_SZ)
        mount_id = ctypes.c_int(-1)
        if _name_to_handle_at(fd, b"", buf, ctypes.byref(mount_id), _AT_EMPTY_PATH) < 0:
            return -1
        return mount_id.value

    @_errmap
    def handle_of(self, inode: int) -> bytes | None:
        """nodeid, (st_dev, st_ino) and the source's file handle, if it has one."""
        node = self._nodes.get(inode)
        if node is None:
            return None
        buf = ctypes.create_string_buffer(8 + _MAX_HANDLE_SZ)
        struct.pack_into("<I", buf, 0, _MAX_HANDLE_SZ)
        mount_id = ctypes.c_int(-1)
        fh_type, fh = 0, b""
        if _name_to_handle_at(node.fd, b"", buf, ctypes.byref(mount_id), _AT_EMPTY_PATH) == 0:
            size, fh_type = struct.unpack_from("<Ii", buf.raw, 0)
            fh = buf.raw[8:8 + size]
        return _HANDLE_HEAD.pack(_HANDLE_MAGIC, node.nodeid, node.key[0], node.key[1],
                                 mount_id.value, fh_type, len(fh)) + fh

    @_errmap
    def inode_for_handle(self, handle: bytes) -> int:
        """Resolve a :meth:`handle_of` handle; ESTALE if the object is gone.

        A node already in the table is returned as is.  Otherwise (a successor
        process) the object is reopened with open_by_handle_at and registered
        under the recorded nodeid with a lookup count of 1, so the kernel's
        eventual FORGET releases it.
        """
        mount_fd = self._mount_fd()
        try:
            return self._revive(handle, mount_fd, 1)
        finally:
            os.close(mount_fd)

    def _mount_fd(self) -> int:
        # open_by_handle_at's mount descriptor may not be an O_PATH one
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                       dir_fd=self._nodes[_ROOT].fd)

    def _revive(self, handle: bytes, mount_fd: int, count: int) -> int:
        """The nodeid of ``handle``, registering it with ``count`` lookups if it is new."""
        if len(handle) < _HANDLE_HEAD.size:
            raise FUSEError(errno.ESTALE)
        magic, nodeid, dev, ino, mount_id, fh_type, size = _HANDLE_HEAD.unpack_from(handle)
        nodeid = int(nodeid)
        fh = handle[_HANDLE_HEAD.size:]
        if magic != _HANDLE_MAGIC or len(fh) != size or nodeid == 0:
            raise FUSEError(errno.ESTALE)
        key = (dev, ino)
        with self._lock:
            node = self._by_key.get(key)
            if node is not None:
                if node.nodeid != nodeid:
                    raise FUSEError(errno.ESTALE)
                return nodeid
            if nodeid in self._nodes or not fh or mount_id != self._root_mount_id:
                raise FUSEError(errno.ESTALE)
        buf = struct.pack("<Ii", size, fh_type) + fh
        # open_by_handle_at needs CAP_DAC_READ_SEARCH, which a handler running
        # as a non-root caller has dropped (caller.py): revive as the server
        with self._identity.as_server():
            fd = _open_by_handle_at(mount_fd, buf, os.O_PATH | os.O_CLOEXEC)
        if fd < 0:
            raise FUSEError(errno.ESTALE)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != key:
                raise FUSEError(errno.ESTALE)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            node = self._by_key.get(key)
            if node is None and nodeid not in self._nodes:
                node = _Node(nodeid, fd, key, stat.S_IFMT(st.st_mode), count)
                self._nodes[nodeid] = node
                self._by_key[key] = node
                if nodeid >= self._next_alloc:
                    self._next_alloc = nodeid + 1
                cache = self._fdcache
                if cache is None:
                    return nodeid
                node.handle, node.cache = buf, cache
                cache.track(node)
            else:
                cache = None
        if cache is not None:
            # a successor reviving many nodes stays bounded: its import runs
            # outside handlers, so the cache trims here when none is running
            cache.trim_if_idle()
            return nodeid
        os.close(fd)
        if node is not None and node.nodeid == nodeid:
            return nodeid
        raise FUSEError(errno.ESTALE)

    # -- crash recovery (fusewire.recovery, "handles" mode) -------------------------
    # The kernel keeps using the nodeids and fh values a dead server handed out.
    # Nodeids are revived from their handle_of() handles; fh values are
    # descriptor numbers, so a successor reopens each open file at the very
    # same number.  prepare_recovery() keeps open files and directories at
    # numbers >= half the descriptor limit, far above what a process opens at
    # start-up, so those numbers are free in the successor.

    _fh_base = 0      # 0: handles are whatever number open() returns

    def prepare_recovery(self) -> None:
        """Place open-file and directory handles at high descriptor numbers (see above)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(1 << 20, hard if hard != resource.RLIM_INFINITY else 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                soft = want
            except (OSError, ValueError):
                pass
        limit = soft if soft != resource.RLIM_INFINITY else want
        self._fh_base = max(64, limit // 2)
        self._recoverable = True

    def import_backing(self, handles: Mapping[int, tuple[int, int]]) -> None:
        """Adopt the kernel backing ids of reopened handles: ``fh -> (inode, id)``."""
        with self._lock:
            for fh, (inode, backing_id) in handles.items():
                if fh not in self._files:
                    continue
                self._backing[fh] = backing_id
                self._backing_refs[backing_id] = self._backing_refs.get(backing_id, 0) + 1
                self._inode_backing.setdefault(inode, backing_id)

    def _place(self, fd: int) -> int:
        """``fd`` moved to a number >= the handle base (unchanged without one)."""
        base = self._fh_base
        if not base or fd >= base:
            return fd
        try:
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base)
        except OSError:
            return fd               # nothing free up there: keep the low number
        os.close(fd)
        return new

    @_errmap
    def entry_identity(self, parent_inode: int, name: bytes) -> tuple[int, int] | None:
        """``(st_dev, st_ino)`` of ``name`` in the directory, None if absent (no lookup)."""
        _check_name(name)
        try:
            st = os.stat(name, dir_fd=self._node(parent_inode).fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def import_nodes(self, nodes: Mapping[int, tuple[bytes, int]]) -> list[int]:
        """Make the node table ``nodeid -> (handle, lookup count)``; return what is lost.

        Nodes already known keep their descriptor and take the given count;
        the others are reopened by handle (open_by_handle_at).  Known nodes
        missing from ``nodes`` and used by no open handle are dropped.
        """
        lost = []
        mount_fd = self._mount_fd()
        try:
            for nodeid, (handle, count) in nodes.items():
                node = self._nodes.get(nodeid)
                if node is None:
                    try:
                        if self._revive(handle, mount_fd, count) == nodeid:
                            continue
                    except (OSError, FUSEError):
                        pass
                    lost.append(nodeid)
                else:
                    node.nlookup = count
        finally:
            os.close(mount_fd)
        with self._lock:
            used = set(self._files.values()) | {d.nodeid for d in self._dirs.values()}
            drop = [n for nid, n in self._nodes.items()
                    if nid != _ROOT and nid not in nodes and nid not in used]
            for n in drop:
                del self._nodes[n.nodeid]
                del self._by_key[n.key]
        for n in drop:
            os.close(n.fd)
        return lost

    def _claim_number(self, number: int) -> None:
        """Make descriptor ``number`` free, moving a node descriptor of ours out of the way."""
        try:
            fcntl.fcntl(number, fcntl.F_GETFD)
        except OSError:
            return                      # free
        with self._lock:
            for node in self._nodes.values():
                if node.raw_fd == number:
                    node.raw_fd = fcntl.fcntl(number, fcntl.F_DUPFD_CLOEXEC, 0)
                    os.close(number)
                    return
        raise FUSEError(errno.EBUSY)

    def reopen_handle(self, fh: int, inode: int, flags: int) -> None:
        """Make ``fh``, an OPEN/CREATE/OPENDIR handle of a previous process, valid here.

        The node's inode is reopened with the recorded open flags (less those
        that act only at creation: O_CREAT, O_EXCL, O_TRUNC) and placed at
        descriptor number ``fh``.  If it cannot be reopened, ``fh`` is still
        reserved, by an O_PATH descriptor that fails every I/O with EBADF, so
        the number is never reused for another file while the kernel holds it;
        FUSEError is raised after that.
        """
        self._claim_number(fh)
        node = self._nodes.get(inode)
        if node is not None:
            is_dir = node.kind == stat.S_IFDIR
        else:       # O_TMPFILE includes the O_DIRECTORY bit
            is_dir = flags & os.O_TMPFILE == os.O_DIRECTORY
        fd = -1
        err = errno.ESTALE
        if node is not None:
            try:
                if is_dir:
                    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                                 dir_fd=node.fd)
                else:
                    fd = os.open(_proc(node.fd), (flags & ~_REOPEN_STRIP) | os.O_CLOEXEC)
            except OSError as exc:
                err = exc.errno or errno.EIO
        failed = fd < 0
        if failed:
            fd = os.open(_proc(self._nodes[_ROOT].fd), os.O_PATH | os.O_CLOEXEC)
        if fd != fh:
            os.dup2(fd, fh, inheritable=False)
            os.close(fd)
        with self._lock:
            if is_dir:
                self._dirs[fh] = _DirHandle(fh, inode)
            else:
                self._files[fh] = inode
        if failed:
            raise FUSEError(err)

    # -- multi-process serving (fusewire.server.processes) ---------------------------
    # Each serving process has its own node table and descriptors.  A node it
    # has not seen is revived from the handle another process published in the
    # shared node log (before that process replied to the kernel); an fh it does
    # not hold is copied from the opener with pidfd_getfd and placed at the same
    # descriptor number.  Lookup counts are per process and only approximate the
    # kernel's: FORGET drops what this process holds, and the node cache is
    # trimmed to ``node_cache``, since any node can be revived again.

    def check_multiprocess(self) -> None:
        """Raise UsageError (one line) if this process cannot serve with several processes."""
        if not hasattr(os, "pidfd_open"):
            raise UsageError("passthrough --processes needs pidfd_open (Linux 5.3, Python 3.9)")
        if self.kernel_passthrough:
            # the kernel takes one backing file per inode; the ids would have to be
            # shared per inode across the processes (docs/design.md)
            raise UsageError("passthrough: -o kernel_passthrough cannot be combined with "
                             "--processes yet")
        root = self._nodes[_ROOT]
        handle = self._handle_bytes(root.fd, root.key)
        if handle is None:
            raise UsageError(f"passthrough --processes: {self.source} has no file handles "
                             "(name_to_handle_at), so processes cannot share its nodes")
        mount_fd = self._mount_fd()
        try:
            fh_type, size = struct.unpack_from("<ii", handle, _HANDLE_HEAD.size - 8)
            buf = struct.pack("<Ii", size, fh_type) + handle[_HANDLE_HEAD.size:]
            fd = _open_by_handle_at(mount_fd, buf, os.O_PATH | os.O_CLOEXEC)
            if fd < 0:
                raise UsageError("passthrough --processes needs open_by_handle_at "
                                 f"(CAP_DAC_READ_SEARCH, i.e. root): {_os_error().strerror}")
            os.close(fd)
        finally:
            os.close(mount_fd)

    def attach_shared(self, table: SharedTable) -> None:
        """Serve as one of several processes sharing ``table`` (called before forking)."""
        self._shared = table
        cache, self._fdcache = self._fdcache, None     # processes trim their own nodes
        if cache is not None:
            for node in self._nodes.values():
                node.cache = None
                if node.raw_fd < 0:
                    node.raw_fd = cache.reopen(node)
            cache.close()
        self._sweep_lock = threading.Lock()
        self._held: set[int] = set()
        self._seen_release = table.released_gen()

    def after_fork(self) -> None:
        """In a serving process forked from a running one: drop the handles it copied.

        The parent's open handles are the parent's (the shared slots do not
        list this process as a holder), and its lock may have been held at
        the fork.
        """
        self._lock = threading.Lock()
        self._sweep_lock = threading.Lock()
        fds = list(self._files) + list(self._dirs)
        self._files.clear()
        self._dirs.clear()
        self._backing.clear()
        self._held = set()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def _handle_bytes(self, fd: int, key: tuple[int, int]) -> bytes | None:
        buf = ctypes.create_string_buffer(8 + _MAX_HANDLE_SZ)
        struct.pack_into("<I", buf, 0, _MAX_HANDLE_SZ)
        mount_id = ctypes.c_int(-1)
        if _name_to_handle_at(fd, b"", buf, ctypes.byref(mount_id), _AT_EMPTY_PATH) < 0:
            return None
        size, fh_type = struct.unpack_from("<Ii", buf.raw, 0)
        return _HANDLE_HEAD.pack(_HANDLE_MAGIC, 0, key[0], key[1], mount_id.value, fh_type,
                                 size) + buf.raw[8:8 + size]

    def _fixed_id(self, key: tuple[int, int]) -> int | None:
        if key == self._root_key:
            return _ROOT
        if key[0] == self._root_key[0] and 1 < key[1] < _ALLOC_BASE:
            return key[1]
        return None

    def _publish(self, fd: int, key: tuple[int, int]) -> None:
        """Put ``key``'s handle in the shared node log unless it is there already.

        Runs once per object new to this process; the handle is compared, not
        just the key, so an inode number reused by a new object is republished.
        """
        shared = self._shared
        assert shared is not None
        if key == self._root_key:
            return
        handle = self._handle_bytes(fd, key)
        if handle is None:
            raise FUSEError(errno.ESTALE)
        if not shared.known(key, handle):
            shared.publish_node(key, self._fixed_id(key), handle)

    def _shared_id(self, key: tuple[int, int]) -> int:
        nodeid = self._fixed_id(key)
        if nodeid is None:
            assert self._shared is not None
            nodeid = self._shared.known_key(key)
            if nodeid is None:
                raise FUSEError(errno.ESTALE)
        return nodeid

    def _shared_node(self, nodeid: int) -> _Node:
        """A node another process registered: revive it by handle, else from an open file."""
        shared = self._shared
        assert shared is not None
        self._sweep()
        handle = shared.node_handle(nodeid)
        if handle is not None:
            head = _HANDLE_HEAD.unpack_from(handle)
            handle = _HANDLE_HEAD.pack(head[0], nodeid, *head[2:]) + handle[_HANDLE_HEAD.size:]
            mount_fd = self._mount_fd()
            try:
                self._revive(handle, mount_fd, 0)
            except FUSEError:
                pass
            finally:
                os.close(mount_fd)
        node = self._nodes.get(nodeid)
        if node is None:        # gone from the tree (unlinked) but still open somewhere
            for fh, owner in shared.opens_of(nodeid):
                try:
                    with self._identity.as_server():     # pidfd_getfd: CAP_SYS_PTRACE
                        copy = shared.copy_from(owner, fh)
                except OSError:
                    continue
                try:
                    if not self._is_node(copy, nodeid):
                        continue
                    fd = os.open(_proc(copy), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
                finally:
                    os.close(copy)
                st = os.fstat(fd)
                with self._lock:
                    node = self._nodes.get(nodeid)
                    if node is None and (st.st_dev, st.st_ino) not in self._by_key:
                        node = _Node(nodeid, fd, (st.st_dev, st.st_ino),
                                     stat.S_IFMT(st.st_mode), 0)
                        self._nodes[nodeid] = node
                        self._by_key[node.key] = node
                        fd = -1
                if fd >= 0:
                    os.close(fd)
                break
        if node is None:
            raise FUSEError(errno.ESTALE)
        return node

    def _trim(self) -> None:
        """Keep at most ``node_cache`` idle node descriptors (any can be revived).

        Called only where no handler of this process holds a node: after
        FORGET and at the start of LOOKUP and READDIR (multi-process serving
        runs one thread per process).
        """
        if len(self._nodes) <= self.node_cache:
            return
        with self._lock:
            used = set(self._files.values()) | {d.nodeid for d in self._dirs.values()}
            drop = [n for nid, n in self._nodes.items() if nid != _ROOT and nid not in used]
            drop = drop[:len(self._nodes) - self.node_cache // 2]
            for n in drop:
                del self._nodes[n.nodeid]
                del self._by_key[n.key]
        for n in drop:
            os.close(n.fd)

    def _free_here(self, number: int) -> bool:
        try:
            fcntl.fcntl(number, fcntl.F_GETFD)
        except OSError:
            return True
        return False

    def _shared_place(self, fd: int, nodeid: int, kind: int, flags: int) -> int:
        """Move a new open's ``fd`` to a handle number free in every process."""
        shared = self._shared
        assert shared is not None
        self._sweep()
        try:
            fh = shared.claim(nodeid, kind, flags, self._free_here)
            try:
                os.dup2(fd, fh, inheritable=False)
            except OSError:
                shared.release(fh)
                raise
        finally:
            os.close(fd)
        with self._lock:
            self._held.add(fh)
        return fh

    def _adopt_handles(self, fhs: list[object]) -> bool:
        """Take over the handles in ``fhs`` this process does not hold; True if any."""
        adopted = False
        for fh in fhs:
            if isinstance(fh, int) and fh not in self._files and fh not in self._dirs:
                adopted = self._adopt(fh) or adopted
        return adopted

    def _adopt(self, fh: int) -> bool:
        """Hold handle ``fh`` of another process here (pidfd_getfd, else reopen)."""
        shared = self._shared
        if shared is None:
            return False
        self._sweep()
        try:
            info = shared.hold(fh)
        except OSError:
            return False
        if info is None:
            return False
        owner, nodeid, kind, flags = info
        try:
            self._place_copy(fh, owner, nodeid, kind, flags)
        except BaseException:
            shared.unhold(fh)       # we hold no descriptor there after all
            raise
        with self._lock:
            self._held.add(fh)
            if kind == stat.S_IFDIR:
                self._dirs[fh] = _DirHandle(fh, nodeid)
            else:
                self._files[fh] = nodeid
        return True

    def _place_copy(self, fh: int, owner: int, nodeid: int, kind: int, flags: int) -> None:
        """Put at number ``fh`` a descriptor of the file process ``owner`` opened there."""
        shared = self._shared
        assert shared is not None
        try:
            with self._identity.as_server():     # pidfd_getfd: CAP_SYS_PTRACE
                copy = shared.copy_from(owner, fh)
            if not self._is_node(copy, nodeid):
                os.close(copy)
                raise OSError(errno.ESTALE, "not the file of that handle")
        except OSError:         # the opener died: reopen from the node
            node = self._node(nodeid)
            if kind == stat.S_IFDIR:
                copy = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=node.fd)
            else:
                copy = os.open(_proc(node.fd), (flags & ~_REOPEN_STRIP) | os.O_CLOEXEC)
        if kind == stat.S_IFDIR:    # a description of our own: scandir moves the offset
            try:
                own = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=copy)
            except OSError:
                pass
            else:
                os.close(copy)
                copy = own
        try:
            self._claim_number(fh)
            os.dup2(copy, fh, inheritable=False)
        finally:
            os.close(copy)

    def _is_node(self, fd: int, nodeid: int) -> bool:
        """Whether ``fd`` is the object ``nodeid`` names (as far as the id tells)."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        fixed = self._fixed_id(key)
        if fixed is not None:
            return fixed == nodeid
        node = self._nodes.get(nodeid)
        return node is None or node.key == key

    def _shared_dir(self, fh: int) -> _DirHandle:
        if self._shared is not None and self._adopt(fh):
            return self._dirs[fh]
        raise FUSEError(errno.EBADF)

    def _shared_release(self, fh: int, *, dirs: bool) -> None:
        """RELEASE/RELEASEDIR landed here: free the slot, close our copy, if any."""
        shared = self._shared
        assert shared is not None
        with self._sweep_lock:
            with self._lock:
                self._backing.pop(fh, None)
                self._files.pop(fh, None)
                self._dirs.pop(fh, None)
                held = fh in self._held
                self._held.discard(fh)
            if held:            # closed before the number can be given to a new open
                os.close(fh)
            try:
                backing_id = shared.release(fh)
            except OSError:
                backing_id = -1
        if backing_id >= 0 and self.notifier is not None:
            try:
                self.notifier.backing_close(backing_id)
            except (OSError, FUSEError):
                pass
        self._sweep()

    def _sweep(self) -> None:
        """Close our copies of handles released through other processes.

        Each copy is closed before the table stops counting this process as
        a holder, so its number cannot be handed to a new open while the old
        file still sits there.
        """
        shared = self._shared
        if shared is None or shared.released_gen() == self._seen_release:
            return
        with self._sweep_lock:
            gen = shared.released_gen()
            if gen == self._seen_release:
                return
            with self._lock:
                held = list(self._held)
            gone = shared.released(held)
            for fh in gone:
                with self._lock:
                    mine = fh in self._held
                    self._held.discard(fh)
                    self._files.pop(fh, None)
                    self._dirs.pop(fh, None)
                    self._backing.pop(fh, None)
                if mine:
                    os.close(fh)
            shared.drop(gone)
            self._seen_release = gen

    def sweep_shared(self) -> None:
        """Called about twice a second from a helper thread of each serving process."""
        self._sweep()

