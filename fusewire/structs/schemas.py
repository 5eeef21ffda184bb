"""construct schemas: the single declaration of every FUSE wire struct.

Field names are the kernel header's (``include/uapi/linux/fuse.h``, 7.45).
Everything is little-endian (host order on x86_64/arm64) and padded by hand
to 8 bytes, so no implicit padding exists.  Comments name the minor that
added a field where it matters for compat sizes (see :mod:`.layout`).

These schemas are the reference: the hot path uses the ``struct.Struct``
codecs that :mod:`.codec` derives from them at import time, and a test
proves the two agree.  Variable-length parts (names, dirent names, handle
bytes, forget arrays) are described here too, as ``VARIABLE`` schemas, and
parsed on the fast path by small functions checked against these.
"""

from __future__ import annotations

from construct import (
    Array,
    Bytes,
    Construct,
    GreedyRange,
    Int16ul,
    Int32sl,
    Int32ul,
    Int64sl,
    Int64ul,
    Padding,
    Struct,
    this,
)

__all__ = ["DRAFT", "FIXED", "VARIABLE"]

u16, u32, u64, i32, i64 = Int16ul, Int32ul, Int64ul, Int32sl, Int64sl

in_header = Struct(
    "len" / u32, "opcode" / u32, "unique" / u64, "nodeid" / u64,
    "uid" / u32, "gid" / u32, "pid" / u32,
    "total_extlen" / u16,  # 7.38, in 8-byte units; before: part of padding
    "padding" / u16,
)
out_header = Struct("len" / u32, "error" / i32, "unique" / u64)

attr = Struct(
    "ino" / u64, "size" / u64, "blocks" / u64,
    "atime" / u64, "mtime" / u64, "ctime" / u64,
    "atimensec" / u32, "mtimensec" / u32, "ctimensec" / u32,
    "mode" / u32, "nlink" / u32, "uid" / u32, "gid" / u32, "rdev" / u32,
    "blksize" / u32,  # 7.9
    "flags" / u32,  # 7.32, ATTR_*
)
sx_time = Struct("tv_sec" / i64, "tv_nsec" / u32, "__reserved" / i32)
statx = Struct(
    "mask" / u32, "blksize" / u32, "attributes" / u64,
    "nlink" / u32, "uid" / u32, "gid" / u32, "mode" / u16, "__spare0" / Array(1, u16),
    "ino" / u64, "size" / u64, "blocks" / u64, "attributes_mask" / u64,
    "atime" / sx_time, "btime" / sx_time, "ctime" / sx_time, "mtime" / sx_time,
    "rdev_major" / u32, "rdev_minor" / u32, "dev_major" / u32, "dev_minor" / u32,
    "__spare2" / Array(14, u64),
)
kstatfs = Struct(
    "blocks" / u64, "bfree" / u64, "bavail" / u64, "files" / u64, "ffree" / u64,
    "bsize" / u32, "namelen" / u32,
    "frsize" / u32,  # 7.4
    "padding" / u32, "spare" / Array(6, u32),
)
file_lock = Struct("start" / u64, "end" / u64, "type" / u32, "pid" / u32)

entry_out = Struct(
    "nodeid" / u64, "generation" / u64, "entry_valid" / u64, "attr_valid" / u64,
    "entry_valid_nsec" / u32, "attr_valid_nsec" / u32, "attr" / attr,
)
forget_in = Struct("nlookup" / u64)
forget_one = Struct("nodeid" / u64, "nlookup" / u64)
batch_forget_in = Struct("count" / u32, "dummy" / u32)  # 7.16
getattr_in = Struct("getattr_flags" / u32, "dummy" / u32, "fh" / u64)  # 7.9
attr_out = Struct("attr_valid" / u64, "attr_valid_nsec" / u32, "dummy" / u32, "attr" / attr)
statx_in = Struct(
    "getattr_flags" / u32, "reserved" / u32, "fh" / u64, "sx_flags" / u32, "sx_mask" / u32,
)
statx_out = Struct(
    "attr_valid" / u64, "attr_valid_nsec" / u32, "flags" / u32,
    "spare" / Array(2, u64), "stat" / statx,
)
mknod_in = Struct("mode" / u32, "rdev" / u32, "umask" / u32, "padding" / u32)  # umask 7.12
mkdir_in = Struct("mode" / u32, "umask" / u32)
rename_in = Struct("newdir" / u64)
rename2_in = Struct("newdir" / u64, "flags" / u32, "padding" / u32)  # 7.23
link_in = Struct("oldnodeid" / u64)
setattr_in = Struct(
    "valid" / u32, "padding" / u32, "fh" / u64, "size" / u64, "lock_owner" / u64,
    "atime" / u64, "mtime" / u64, "ctime" / u64,
    "atimensec" / u32, "mtimensec" / u32, "ctimensec" / u32,
    "mode" / u32, "unused4" / u32, "uid" / u32, "gid" / u32, "unused5" / u32,
)
open_in = Struct("flags" / u32, "open_flags" / u32)  # open_flags 7.33
create_in = Struct("flags" / u32, "mode" / u32, "umask" / u32, "open_flags" / u32)
open_out = Struct("fh" / u64, "open_flags" / u32, "backing_id" / i32)  # backing_id 7.40
release_in = Struct("fh" / u64, "flags" / u32, "release_flags" / u32, "lock_owner" / u64)
flush_in = Struct("fh" / u64, "unused" / u32, "padding" / u32, "lock_owner" / u64)
read_in = Struct(
    "fh" / u64, "offset" / u64, "size" / u32, "read_flags" / u32,
    "lock_owner" / u64, "flags" / u32, "padding" / u32,  # 7.9
)
write_in = Struct(
    "fh" / u64, "offset" / u64, "size" / u32, "write_flags" / u32,
    "lock_owner" / u64, "flags" / u32, "padding" / u32,  # 7.9; compat 24 bytes
)
write_out = Struct("size" / u32, "padding" / u32)
statfs_out = Struct("st" / kstatfs)
fsync_in = Struct("fh" / u64, "fsync_flags" / u32, "padding" / u32)
setxattr_in = Struct(
    "size" / u32, "flags" / u32,
    "setxattr_flags" / u32, "padding" / u32,  # SETXATTR_EXT (7.33); compat 8 bytes
)
getxattr_in = Struct("size" / u32, "padding" / u32)
getxattr_out = Struct("size" / u32, "padding" / u32)
lk_in = Struct(
    "fh" / u64, "owner" / u64, "lk" / file_lock, "lk_flags" / u32, "padding" / u32,
)
lk_out = Struct("lk" / file_lock)
access_in = Struct("mask" / u32, "padding" / u32)
init_in = Struct(
    "major" / u32, "minor" / u32, "max_readahead" / u32, "flags" / u32,
    "flags2" / u32, "unused" / Array(11, u32),  # 7.36
)
init_out = Struct(
    "major" / u32, "minor" / u32, "max_readahead" / u32, "flags" / u32,
    "max_background" / u16, "congestion_threshold" / u16,  # 7.13
    "max_write" / u32,
    "time_gran" / u32,  # 7.23
    "max_pages" / u16,  # 7.28
    "map_alignment" / u16,  # 7.31
    "flags2" / u32,  # 7.36
    "max_stack_depth" / u32,  # 7.40
    "request_timeout" / u16,  # 7.43
    "unused" / Array(11, u16),
)
cuse_init_in = Struct("major" / u32, "minor" / u32, "unused" / u32, "flags" / u32)
cuse_init_out = Struct(
    "major" / u32, "minor" / u32, "unused" / u32, "flags" / u32,
    "max_read" / u32, "max_write" / u32, "dev_major" / u32, "dev_minor" / u32,
    "spare" / Array(10, u32),
)
interrupt_in = Struct("unique" / u64)
bmap_in = Struct("block" / u64, "blocksize" / u32, "padding" / u32)
bmap_out = Struct("block" / u64)
ioctl_in = Struct(
    "fh" / u64, "flags" / u32, "cmd" / u32, "arg" / u64, "in_size" / u32, "out_size" / u32,
)
ioctl_iovec = Struct("base" / u64, "len" / u64)
ioctl_out = Struct("result" / i32, "flags" / u32, "in_iovs" / u32, "out_iovs" / u32)
poll_in = Struct("fh" / u64, "kh" / u64, "flags" / u32, "events" / u32)  # events 7.21
poll_out = Struct("revents" / u32, "padding" / u32)
notify_poll_wakeup_out = Struct("kh" / u64)
fallocate_in = Struct("fh" / u64, "offset" / u64, "length" / u64, "mode" / u32, "padding" / u32)
dirent = Struct("ino" / u64, "off" / u64, "namelen" / u32, "type" / u32)  # + name, pad to 8
direntplus = Struct("entry_out" / entry_out, "dirent" / dirent)  # + name, pad to 8
notify_inval_inode_out = Struct("ino" / u64, "off" / i64, "len" / i64)
notify_inval_entry_out = Struct("parent" / u64, "namelen" / u32, "flags" / u32)
notify_delete_out = Struct("parent" / u64, "child" / u64, "namelen" / u32, "padding" / u32)
notify_store_out = Struct("nodeid" / u64, "offset" / u64, "size" / u32, "padding" / u32)
notify_retrieve_out = Struct(
    "notify_unique" / u64, "nodeid" / u64, "offset" / u64, "size" / u32, "padding" / u32,
)
notify_retrieve_in = Struct(
    "dummy1" / u64, "offset" / u64, "size" / u32, "dummy2" / u32, "dummy3" / u64, "dummy4" / u64,
)
notify_prune_out = Struct("count" / u32, "padding" / u32, "spare" / u64)  # 7.45
backing_map = Struct("fd" / i32, "flags" / u32, "padding" / u64)  # 7.40
lseek_in = Struct("fh" / u64, "offset" / u64, "whence" / u32, "padding" / u32)
lseek_out = Struct("offset" / u64)
copy_file_range_in = Struct(
    "fh_in" / u64, "off_in" / u64, "nodeid_out" / u64, "fh_out" / u64, "off_out" / u64,
    "len" / u64, "flags" / u64,
)
copy_file_range_out = Struct("bytes_copied" / u64)  # 7.45
setupmapping_in = Struct(
    "fh" / u64, "foffset" / u64, "len" / u64, "flags" / u64, "moffset" / u64,
)
removemapping_in = Struct("count" / u32)  # not padded: the array starts at offset 4
removemapping_one = Struct("moffset" / u64, "len" / u64)
syncfs_in = Struct("padding" / u64)  # 7.34
secctx = Struct("size" / u32, "padding" / u32)  # + xattr name + value, 7.36
secctx_header = Struct("size" / u32, "nr_secctx" / u32)
ext_header = Struct("size" / u32, "type" / u32)  # 7.38
supp_groups = Struct("nr_groups" / u32)  # + u32 groups[nr_groups]
uring_ent_in_out = Struct(
    "flags" / u64, "commit_id" / u64, "payload_sz" / u32, "padding" / u32, "reserved" / u64,
)
uring_req_header = Struct(
    "in_out" / Bytes(128), "op_in" / Bytes(128), "ring_ent_in_out" / uring_ent_in_out,
)
uring_cmd_req = Struct("flags" / u64, "commit_id" / u64, "qid" / u16, "padding" / Bytes(6))

# -- DRAFT: LOOKUP_HANDLE RFC (not upstream; never negotiated unless opted in) --------
#: v1/v2: fuse_file_handle {u32 size, u32 type, u8 handle[size]}
file_handle_v2 = Struct("size" / u32, "type" / u32)
#: v2: init_out with max_handle_sz taking unused[0] (offset 42).
init_out_v2 = Struct(
    "major" / u32, "minor" / u32, "max_readahead" / u32, "flags" / u32,
    "max_background" / u16, "congestion_threshold" / u16, "max_write" / u32,
    "time_gran" / u32, "max_pages" / u16, "map_alignment" / u16, "flags2" / u32,
    "max_stack_depth" / u32, "request_timeout" / u16,
    "max_handle_sz" / u16, "unused" / Array(10, u16),
)
#: v3: fuse_file_handle {u16 size, u8 handle[size]}
file_handle_v3 = Struct("size" / u16)
#: v3: entry2_out (no attributes; they come from a STATX in the same compound).
entry2_out = Struct(
    "nodeid" / u64, "generation" / u64, "entry_valid" / u64,
    "entry_valid_nsec" / u32, "flags" / u32, "spare" / u64,
)
#: fusewire's REVALIDATE_FH request body (our definition for the draft profiles):
#: the generation and lookup count the kernel holds for the header's nodeid;
#: the object's fuse_file_handle (profile form) follows.  flags: reserved, 0.
revalidate_fh_in = Struct("generation" / u64, "nlookup" / u64, "flags" / u32, "padding" / u32)
#: FUSE_COMPOUND request header, as the compound series v5 defines it (which
#: LOOKUP_HANDLE RFC v3 builds on): count, flags, result_size, then C padding
#: to the u64 ``reserved`` (24 bytes).  Complete sub-requests follow.
compound_in = Struct("count" / u32, "flags" / u32, "result_size" / u32, "padding" / u32,
                     "reserved" / u64)
#: FUSE_COMPOUND reply header (v5): count of sub-replies, flags, reserved (16).
#: Complete sub-replies (fuse_out_header + body) follow.
compound_out = Struct("count" / u32, "flags" / u32, "reserved" / u64)

FIXED: dict[str, Construct] = {
    name: obj for name, obj in dict(globals()).items()
    if isinstance(obj, Struct) and not name.startswith("_")
}

DRAFT = frozenset({
    "file_handle_v2", "init_out_v2", "file_handle_v3", "entry2_out", "revalidate_fh_in",
    "compound_in", "compound_out",
})

# -- variable-length shapes (reference parsers for the hand-written fast paths) ------
VARIABLE: dict[str, Construct] = {
    # a dirent record: header, name, zero padding to 8
    "dirent_record": Struct(
        "ino" / u64, "off" / u64, "namelen" / u32, "type" / u32,
        "name" / Bytes(this.namelen), Padding((-(24 + this.namelen)) % 8),
    ),
    "batch_forget": Struct(
        "count" / u32, "dummy" / u32, "forgets" / Array(this.count, forget_one),
    ),
    "supp_groups_ext": Struct(
        "size" / u32, "type" / u32, "nr_groups" / u32, "groups" / Array(this.nr_groups, u32),
    ),
    "ext_block": GreedyRange(Struct("size" / u32, "type" / u32, "body" / Bytes(this.size - 8))),
    "prune": Struct("count" / u32, "padding" / u32, "spare" / u64,
                    "nodeids" / Array(this.count, u64)),
    "file_handle_v2_full": Struct("size" / u32, "type" / u32, "handle" / Bytes(this.size)),
    "file_handle_v3_full": Struct("size" / u16, "handle" / Bytes(this.size)),
}
