"""Typed records of the FUSE wire structs.

GENERATED from fusewire/structs/schemas.py by ``python -m fusewire.structs.codec``;
do not edit.  tests/test_structs.py fails when this file is out of date.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "AccessIn",
    "Attr",
    "AttrOut",
    "BackingMap",
    "BatchForgetIn",
    "BmapIn",
    "BmapOut",
    "CompoundIn",
    "CompoundOut",
    "CopyFileRangeIn",
    "CopyFileRangeOut",
    "CreateIn",
    "CuseInitIn",
    "CuseInitOut",
    "Dirent",
    "Direntplus",
    "Entry2Out",
    "EntryOut",
    "ExtHeader",
    "FallocateIn",
    "FileHandleV2",
    "FileHandleV3",
    "FileLock",
    "FlushIn",
    "ForgetIn",
    "ForgetOne",
    "FsyncIn",
    "GetattrIn",
    "GetxattrIn",
    "GetxattrOut",
    "InHeader",
    "InitIn",
    "InitOut",
    "InitOutV2",
    "InterruptIn",
    "IoctlIn",
    "IoctlIovec",
    "IoctlOut",
    "Kstatfs",
    "LinkIn",
    "LkIn",
    "LkOut",
    "LseekIn",
    "LseekOut",
    "MkdirIn",
    "MknodIn",
    "NotifyDeleteOut",
    "NotifyInvalEntryOut",
    "NotifyInvalInodeOut",
    "NotifyPollWakeupOut",
    "NotifyPruneOut",
    "NotifyRetrieveIn",
    "NotifyRetrieveOut",
    "NotifyStoreOut",
    "OpenIn",
    "OpenOut",
    "OutHeader",
    "PollIn",
    "PollOut",
    "ReadIn",
    "ReleaseIn",
    "RemovemappingIn",
    "RemovemappingOne",
    "Rename2In",
    "RenameIn",
    "RevalidateFhIn",
    "Secctx",
    "SecctxHeader",
    "SetattrIn",
    "SetupmappingIn",
    "SetxattrIn",
    "StatfsOut",
    "Statx",
    "StatxIn",
    "StatxOut",
    "SuppGroups",
    "SxTime",
    "SyncfsIn",
    "UringCmdReq",
    "UringEntInOut",
    "UringReqHeader",
    "WriteIn",
    "WriteOut",
]


class InHeader(NamedTuple):
    """``fuse_in_header``."""

    len: int
    opcode: int
    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int
    total_extlen: int
    padding: int


class OutHeader(NamedTuple):
    """``fuse_out_header``."""

    len: int
    error: int
    unique: int


class Attr(NamedTuple):
    """``fuse_attr``."""

    ino: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    blksize: int
    flags: int


class SxTime(NamedTuple):
    """``fuse_sx_time``."""

    tv_sec: int
    tv_nsec: int
    reserved: int


class Statx(NamedTuple):
    """``fuse_statx``."""

    mask: int
    blksize: int
    attributes: int
    nlink: int
    uid: int
    gid: int
    mode: int
    spare0: tuple[int, ...]
    ino: int
    size: int
    blocks: int
    attributes_mask: int
    atime: SxTime
    btime: SxTime
    ctime: SxTime
    mtime: SxTime
    rdev_major: int
    rdev_minor: int
    dev_major: int
    dev_minor: int
    spare2: tuple[int, ...]


class Kstatfs(NamedTuple):
    """``fuse_kstatfs``."""

    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int
    frsize: int
    padding: int
    spare: tuple[int, ...]


class FileLock(NamedTuple):
    """``fuse_file_lock``."""

    start: int
    end: int
    type: int
    pid: int


class EntryOut(NamedTuple):
    """``fuse_entry_out``."""

    nodeid: int
    generation: int
    entry_valid: int
    attr_valid: int
    entry_valid_nsec: int
    attr_valid_nsec: int
    attr: Attr


class ForgetIn(NamedTuple):
    """``fuse_forget_in``."""

    nlookup: int


class ForgetOne(NamedTuple):
    """``fuse_forget_one``."""

    nodeid: int
    nlookup: int


class BatchForgetIn(NamedTuple):
    """``fuse_batch_forget_in``."""

    count: int  # type: ignore[assignment]
    dummy: int


class GetattrIn(NamedTuple):
    """``fuse_getattr_in``."""

    getattr_flags: int
    dummy: int
    fh: int


class AttrOut(NamedTuple):
    """``fuse_attr_out``."""

    attr_valid: int
    attr_valid_nsec: int
    dummy: int
    attr: Attr


class StatxIn(NamedTuple):
    """``fuse_statx_in``."""

    getattr_flags: int
    reserved: int
    fh: int
    sx_flags: int
    sx_mask: int


class StatxOut(NamedTuple):
    """``fuse_statx_out``."""

    attr_valid: int
    attr_valid_nsec: int
    flags: int
    spare: tuple[int, ...]
    stat: Statx


class MknodIn(NamedTuple):
    """``fuse_mknod_in``."""

    mode: int
    rdev: int
    umask: int
    padding: int


class MkdirIn(NamedTuple):
    """``fuse_mkdir_in``."""

    mode: int
    umask: int


class RenameIn(NamedTuple):
    """``fuse_rename_in``."""

    newdir: int


class Rename2In(NamedTuple):
    """``fuse_rename2_in``."""

    newdir: int
    flags: int
    padding: int


class LinkIn(NamedTuple):
    """``fuse_link_in``."""

    oldnodeid: int


class SetattrIn(NamedTuple):
    """``fuse_setattr_in``."""

    valid: int
    padding: int
    fh: int
    size: int
    lock_owner: int
    atime: int
    mtime: int
    ctime: int
    atimensec: int
    mtimensec: int
    ctimensec: int
    mode: int
    unused4: int
    uid: int
    gid: int
    unused5: int


class OpenIn(NamedTuple):
    """``fuse_open_in``."""

    flags: int
    open_flags: int


class CreateIn(NamedTuple):
    """``fuse_create_in``."""

    flags: int
    mode: int
    umask: int
    open_flags: int


class OpenOut(NamedTuple):
    """``fuse_open_out``."""

    fh: int
    open_flags: int
    backing_id: int


class ReleaseIn(NamedTuple):
    """``fuse_release_in``."""

    fh: int
    flags: int
    release_flags: int
    lock_owner: int


class FlushIn(NamedTuple):
    """``fuse_flush_in``."""

    fh: int
    unused: int
    padding: int
    lock_owner: int


class ReadIn(NamedTuple):
    """``fuse_read_in``."""

    fh: int
    offset: int
    size: int
    read_flags: int
    lock_owner: int
    flags: int
    padding: int


class WriteIn(NamedTuple):
    """``fuse_write_in``."""

    fh: int
    offset: int
    size: int
    write_flags: int
    lock_owner: int
    flags: int
    padding: int


class WriteOut(NamedTuple):
    """``fuse_write_out``."""

    size: int
    padding: int


class StatfsOut(NamedTuple):
    """``fuse_statfs_out``."""

    st: Kstatfs


class FsyncIn(NamedTuple):
    """``fuse_fsync_in``."""

    fh: int
    fsync_flags: int
    padding: int


class SetxattrIn(NamedTuple):
    """``fuse_setxattr_in``."""

    size: int
    flags: int
    setxattr_flags: int
    padding: int


class GetxattrIn(NamedTuple):
    """``fuse_getxattr_in``."""

    size: int
    padding: int


class GetxattrOut(NamedTuple):
    """``fuse_getxattr_out``."""

    size: int
    padding: int


class LkIn(NamedTuple):
    """``fuse_lk_in``."""

    fh: int
    owner: int
    lk: FileLock
    lk_flags: int
    padding: int


class LkOut(NamedTuple):
    """``fuse_lk_out``."""

    lk: FileLock


class AccessIn(NamedTuple):
    """``fuse_access_in``."""

    mask: int
    padding: int


class InitIn(NamedTuple):
    """``fuse_init_in``."""

    major: int
    minor: int
    max_readahead: int
    flags: int
    flags2: int
    unused: tuple[int, ...]


class InitOut(NamedTuple):
    """``fuse_init_out``."""

    major: int
    minor: int
    max_readahead: int
    flags: int
    max_background: int
    congestion_threshold: int
    max_write: int
    time_gran: int
    max_pages: int
    map_alignment: int
    flags2: int
    max_stack_depth: int
    request_timeout: int
    unused: tuple[int, ...]


class CuseInitIn(NamedTuple):
    """``fuse_cuse_init_in``."""

    major: int
    minor: int
    unused: int
    flags: int


class CuseInitOut(NamedTuple):
    """``fuse_cuse_init_out``."""

    major: int
    minor: int
    unused: int
    flags: int
    max_read: int
    max_write: int
    dev_major: int
    dev_minor: int
    spare: tuple[int, ...]


class InterruptIn(NamedTuple):
    """``fuse_interrupt_in``."""

    unique: int


class BmapIn(NamedTuple):
    """``fuse_bmap_in``."""

    block: int
    blocksize: int
    padding: int


class BmapOut(NamedTuple):
    """``fuse_bmap_out``."""

    block: int


class IoctlIn(NamedTuple):
    """``fuse_ioctl_in``."""

    fh: int
    flags: int
    cmd: int
    arg: int
    in_size: int
    out_size: int


class IoctlIovec(NamedTuple):
    """``fuse_ioctl_iovec``."""

    base: int
    len: int


class IoctlOut(NamedTuple):
    """``fuse_ioctl_out``."""

    result: int
    flags: int
    in_iovs: int
    out_iovs: int


class PollIn(NamedTuple):
    """``fuse_poll_in``."""

    fh: int
    kh: int
    flags: int
    events: int


class PollOut(NamedTuple):
    """``fuse_poll_out``."""

    revents: int
    padding: int


class NotifyPollWakeupOut(NamedTuple):
    """``fuse_notify_poll_wakeup_out``."""

    kh: int


class FallocateIn(NamedTuple):
    """``fuse_fallocate_in``."""

    fh: int
    offset: int
    length: int
    mode: int
    padding: int


class Dirent(NamedTuple):
    """``fuse_dirent``."""

    ino: int
    off: int
    namelen: int
    type: int


class Direntplus(NamedTuple):
    """``fuse_direntplus``."""

    entry_out: EntryOut
    dirent: Dirent


class NotifyInvalInodeOut(NamedTuple):
    """``fuse_notify_inval_inode_out``."""

    ino: int
    off: int
    len: int


class NotifyInvalEntryOut(NamedTuple):
    """``fuse_notify_inval_entry_out``."""

    parent: int
    namelen: int
    flags: int


class NotifyDeleteOut(NamedTuple):
    """``fuse_notify_delete_out``."""

    parent: int
    child: int
    namelen: int
    padding: int


class NotifyStoreOut(NamedTuple):
    """``fuse_notify_store_out``."""

    nodeid: int
    offset: int
    size: int
    padding: int


class NotifyRetrieveOut(NamedTuple):
    """``fuse_notify_retrieve_out``."""

    notify_unique: int
    nodeid: int
    offset: int
    size: int
    padding: int


class NotifyRetrieveIn(NamedTuple):
    """``fuse_notify_retrieve_in``."""

    dummy1: int
    offset: int
    size: int
    dummy2: int
    dummy3: int
    dummy4: int


class NotifyPruneOut(NamedTuple):
    """``fuse_notify_prune_out``."""

    count: int  # type: ignore[assignment]
    padding: int
    spare: int


class BackingMap(NamedTuple):
    """``fuse_backing_map``."""

    fd: int
    flags: int
    padding: int


class LseekIn(NamedTuple):
    """``fuse_lseek_in``."""

    fh: int
    offset: int
    whence: int
    padding: int


class LseekOut(NamedTuple):
    """``fuse_lseek_out``."""

    offset: int


class CopyFileRangeIn(NamedTuple):
    """``fuse_copy_file_range_in``."""

    fh_in: int
    off_in: int
    nodeid_out: int
    fh_out: int
    off_out: int
    len: int
    flags: int


class CopyFileRangeOut(NamedTuple):
    """``fuse_copy_file_range_out``."""

    bytes_copied: int


class SetupmappingIn(NamedTuple):
    """``fuse_setupmapping_in``."""

    fh: int
    foffset: int
    len: int
    flags: int
    moffset: int


class RemovemappingIn(NamedTuple):
    """``fuse_removemapping_in``."""

    count: int  # type: ignore[assignment]


class RemovemappingOne(NamedTuple):
    """``fuse_removemapping_one``."""

    moffset: int
    len: int


class SyncfsIn(NamedTuple):
    """``fuse_syncfs_in``."""

    padding: int


class Secctx(NamedTuple):
    """``fuse_secctx``."""

    size: int
    padding: int


class SecctxHeader(NamedTuple):
    """``fuse_secctx_header``."""

    size: int
    nr_secctx: int


class ExtHeader(NamedTuple):
    """``fuse_ext_header``."""

    size: int
    type: int


class SuppGroups(NamedTuple):
    """``fuse_supp_groups``."""

    nr_groups: int


class UringEntInOut(NamedTuple):
    """``fuse_uring_ent_in_out``."""

    flags: int
    commit_id: int
    payload_sz: int
    padding: int
    reserved: int


class UringReqHeader(NamedTuple):
    """``fuse_uring_req_header``."""

    in_out: bytes
    op_in: bytes
    ring_ent_in_out: UringEntInOut


class UringCmdReq(NamedTuple):
    """``fuse_uring_cmd_req``."""

    flags: int
    commit_id: int
    qid: int
    padding: bytes


class FileHandleV2(NamedTuple):
    """``fuse_file_handle_v2``. DRAFT (LOOKUP_HANDLE RFC)."""

    size: int
    type: int


class InitOutV2(NamedTuple):
    """``fuse_init_out_v2``. DRAFT (LOOKUP_HANDLE RFC)."""

    major: int
    minor: int
    max_readahead: int
    flags: int
    max_background: int
    congestion_threshold: int
    max_write: int
    time_gran: int
    max_pages: int
    map_alignment: int
    flags2: int
    max_stack_depth: int
    request_timeout: int
    max_handle_sz: int
    unused: tuple[int, ...]


class FileHandleV3(NamedTuple):
    """``fuse_file_handle_v3``. DRAFT (LOOKUP_HANDLE RFC)."""

    size: int


class Entry2Out(NamedTuple):
    """``fuse_entry2_out``. DRAFT (LOOKUP_HANDLE RFC)."""

    nodeid: int
    generation: int
    entry_valid: int
    entry_valid_nsec: int
    flags: int
    spare: int


class RevalidateFhIn(NamedTuple):
    """``fuse_revalidate_fh_in``. DRAFT (LOOKUP_HANDLE RFC)."""

    generation: int
    nlookup: int
    flags: int
    padding: int


class CompoundIn(NamedTuple):
    """``fuse_compound_in``. DRAFT (LOOKUP_HANDLE RFC)."""

    count: int  # type: ignore[assignment]
    flags: int
    result_size: int
    padding: int
    reserved: int


class CompoundOut(NamedTuple):
    """``fuse_compound_out``. DRAFT (LOOKUP_HANDLE RFC)."""

    count: int  # type: ignore[assignment]
    flags: int
    reserved: int
