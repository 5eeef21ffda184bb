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
_NAMED = (ACL_USER, ACL_GROUP)

#: an ACL's entries: ``(tag, perm, id)`` in the xattr's order
AclEntries = list[tuple[int, int, int]]


def _einval() -> FUSEError:
    return FUSEError(errno.EINVAL)


def decode_acl(value: bytes) -> AclEntries:
    """The entries of an xattr value, or a :class:`FUSEError` as the kernel has it.

    No bytes or no entries decode to ``[]`` (setting that removes the ACL); a
    version other than 2 is EOPNOTSUPP; EINVAL unless the size fits whole
    entries and they make a valid ACL (``posix_acl_valid``): one owner entry,
    then named users, the owning group, named groups, a mask (required where
    there are named entries) and one other entry, in that order, with only
    ``rwx`` bits and no named entry for the undefined id.  Entries without an
    id get the undefined one.
    """
    if not value:
        return []
    if len(value) < _HEADER.size:
        raise _einval()
    if _HEADER.unpack_from(value)[0] != _VERSION:
        raise FUSEError(errno.EOPNOTSUPP)
    if (len(value) - _HEADER.size) % _ENTRY.size:
        raise _einval()
    entries = [(tag, perm, ident if tag in _NAMED else ACL_UNDEFINED_ID)
               for tag, perm, ident in _ENTRY.iter_unpack(memoryview(value)[_HEADER.size:])]
    if not entries:
        return entries
    state = ACL_USER_OBJ
    needs_mask = False
    for tag, perm, ident in entries:
        if perm & ~7 or state == 0:
            raise _einval()
        if tag == ACL_USER_OBJ and state == ACL_USER_OBJ:
            state = ACL_USER
        elif tag in _NAMED and state == (ACL_USER if tag == ACL_USER else ACL_GROUP) \
                and ident != ACL_UNDEFINED_ID:
            needs_mask = True
        elif tag == ACL_GROUP_OBJ and state == ACL_USER:
            state = ACL_GROUP
        elif tag == ACL_MASK and state == ACL_GROUP:
            state = ACL_OTHER
        elif tag == ACL_OTHER and (state == ACL_OTHER
                                   or (state == ACL_GROUP and not needs_mask)):
            state = 0
        else:
            raise _einval()
    if state != 0:
        raise _einval()
    return entries


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
