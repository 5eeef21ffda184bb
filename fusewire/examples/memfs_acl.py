"""MemFS's POSIX ACLs: the xattr format, validation, evaluation and inheritance.

One job: the rules of POSIX.1e access control lists as Linux applies them,
on ACLs kept as the values of the ``system.posix_acl_access`` and
``system.posix_acl_default`` xattrs in the kernel's ``posix_acl_xattr``
format (a little-endian u32 version 2, then one ``tag u16, perm u16, id
u32`` record per entry).  Pure functions: :mod:`fusewire.examples.memfs_xattrs`
stores the values and :class:`fusewire.examples.memfs.MemFS` calls these on
permission checks, chmod and the creation of new objects.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING

from fusewire.types import FUSEError

if TYPE_CHECKING:
    from fusewire.types import RequestContext

__all__ = [
    "ACL_ACCESS", "ACL_DEFAULT", "ACL_GROUP", "ACL_GROUP_OBJ", "ACL_MASK", "ACL_OTHER",
    "ACL_USER", "ACL_USER_OBJ", "AclEntries", "acl_allows", "acl_chmod", "acl_create",
    "acl_equiv_mode", "decode_acl", "encode_acl",
]

#: the xattr names of the two ACLs of an inode
ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"

ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20
#: the id the kernel writes for entries that name nobody (the owner, mask, other)
ACL_UNDEFINED_ID = 0xFFFFFFFF

_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
#: the order a valid ACL lists its tags in
_ORDER = {ACL_USER_OBJ: 0, ACL_USER: 1, ACL_GROUP_OBJ: 2, ACL_GROUP: 3, ACL_MASK: 4,
          ACL_OTHER: 5}
_NAMED = (ACL_USER, ACL_GROUP)

#: an ACL's entries: ``(tag, perm, id)`` in the xattr's order
AclEntries = list[tuple[int, int, int]]


def _einval() -> FUSEError:
    return FUSEError(errno.EINVAL)


def decode_acl(value: bytes) -> AclEntries:
    """The entries of an xattr value; EINVAL unless it is a valid ACL.

    Valid as the kernel's ``posix_acl_valid`` has it: version 2, exactly one
    owner, owning-group and other entry, named users and groups in
    ascending id order without duplicates, a mask entry (exactly one) where
    there are named entries, the entries in tag order, only ``rwx`` bits.
    A value with no entries decodes to ``[]`` (it removes the ACL).
    """
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise _einval()
    if _HEADER.unpack_from(value)[0] != _VERSION:
        raise _einval()
    entries = [(tag, perm, ident) for tag, perm, ident
               in _ENTRY.iter_unpack(memoryview(value)[_HEADER.size:])]
    if not entries:
        return entries
    last_rank = -1
    last_id = -1
    seen: dict[int, int] = {}
    for tag, perm, ident in entries:
        rank = _ORDER.get(tag)
        if rank is None or perm & ~7 or rank < last_rank:
            raise _einval()
        if tag in _NAMED:
            if ident == ACL_UNDEFINED_ID or (rank == last_rank and ident <= last_id):
                raise _einval()
            last_id = ident
        elif tag in seen:
            raise _einval()
        seen[tag] = seen.get(tag, 0) + 1
        last_rank = rank
    if not all(t in seen for t in (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER)):
        raise _einval()
    if (ACL_USER in seen or ACL_GROUP in seen) and ACL_MASK not in seen:
        raise _einval()
    return [(tag, perm, ident if tag in _NAMED else ACL_UNDEFINED_ID)
            for tag, perm, ident in entries]


def encode_acl(entries: AclEntries) -> bytes:
    """The xattr value of ``entries`` (the kernel's byte format)."""
    return _HEADER.pack(_VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)


def acl_equiv_mode(entries: AclEntries, mode: int) -> tuple[int, bool]:
    """``(mode, equivalent)``: ``mode`` with its rwx bits from the ACL, and whether the
    ACL says no more than those bits (no named entries, no mask), so it need not be kept.

    The set-ID and sticky bits of ``mode`` are kept; with a mask entry the
    group bits are the mask's.
    """
    bits = 0
    equivalent = True
    for tag, perm, _ in entries:
        if tag == ACL_USER_OBJ:
            bits |= perm << 6
        elif tag == ACL_GROUP_OBJ:
            bits |= perm << 3
        elif tag == ACL_OTHER:
            bits |= perm
        elif tag == ACL_MASK:
            bits = (bits & ~0o070) | perm << 3
            equivalent = False
        else:
            equivalent = False
    return (mode & ~0o777) | bits, equivalent


def acl_chmod(entries: AclEntries, mode: int) -> AclEntries:
    """The access ACL after a chmod to ``mode``: owner, mask (else owning group) and
    other entries take the new bits; named entries keep theirs."""
    has_mask = any(tag == ACL_MASK for tag, _, _ in entries)
    out = []
    for tag, perm, ident in entries:
        if tag == ACL_USER_OBJ:
            perm = (mode >> 6) & 7
        elif tag == ACL_MASK or (tag == ACL_GROUP_OBJ and not has_mask):
            perm = (mode >> 3) & 7
        elif tag == ACL_OTHER:
            perm = mode & 7
        out.append((tag, perm, ident))
    return out


def acl_create(default: AclEntries, mode: int) -> tuple[int, AclEntries | None]:
    """A new object's ``(mode, access ACL)`` under a directory whose default ACL is
    ``default``, created with the requested ``mode`` (no umask: the ACL replaces it).

    POSIX.1e inheritance: the owner and other entries are limited by the
    mode's bits, and the mask entry (else the owning group's) by its group
    bits; the mode takes the resulting bits.  The access ACL is None where it
    says no more than the mode.
    """
    entries = []
    group_at = mask_at = -1
    for i, (tag, perm, ident) in enumerate(default):
        if tag == ACL_USER_OBJ:
            perm &= (mode >> 6) & 7
            mode &= (perm << 6) | ~0o700
        elif tag == ACL_OTHER:
            perm &= mode & 7
            mode &= perm | ~0o007
        elif tag == ACL_GROUP_OBJ:
            group_at = i
        elif tag == ACL_MASK:
            mask_at = i
        entries.append((tag, perm, ident))
    at = mask_at if mask_at >= 0 else group_at
    if at >= 0:
        tag, perm, ident = entries[at]
        perm &= (mode >> 3) & 7
        mode &= (perm << 3) | ~0o070
        entries[at] = (tag, perm, ident)
    equivalent = not any(tag in (ACL_USER, ACL_GROUP, ACL_MASK) for tag, _, _ in entries)
    return mode, None if equivalent else entries


def acl_allows(entries: AclEntries, uid: int, gid: int, want: int,
               ctx: RequestContext) -> bool:
    """Whether the access ACL ``entries`` of an object owned by ``uid``:``gid``
    grants the caller ``want`` (R_OK/W_OK/X_OK bits), as the kernel decides it.

    The owner gets the owner entry; a named user their entry within the mask;
    a member of the owning group or of named groups any one of those entries
    (within the mask) that grants it all, and nothing if none does; others the
    other entry.
    """
    mask = 7
    for tag, perm, _ in entries:
        if tag == ACL_MASK:
            mask = perm
    if ctx.uid == uid:
        for tag, perm, _ in entries:
            if tag == ACL_USER_OBJ:
                return want & ~perm == 0
    for tag, perm, ident in entries:
        if tag == ACL_USER and ident == ctx.uid:
            return want & ~(perm & mask) == 0
    found = False
    for tag, perm, ident in entries:
        if (tag == ACL_GROUP_OBJ and (gid == ctx.gid or gid in ctx.groups)) or \
                (tag == ACL_GROUP and (ident == ctx.gid or ident in ctx.groups)):
            if want & ~(perm & mask) == 0:
                return True
            found = True
    if found:
        return False
    for tag, perm, _ in entries:
        if tag == ACL_OTHER:
            return want & ~perm == 0
    return False
