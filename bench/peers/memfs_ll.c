/*
 * memfs_ll: an in-memory filesystem on libfuse3's low-level API.
 *
 * Written for fusewire's benchmark (bench/run.py) as the C reference point:
 * the same in-memory logic as the Python peers (a table of inodes, one
 * growable buffer per file, one name table per directory), with every entry
 * and attribute timeout set to 0 so that each stat() reaches the server.
 *
 *   memfs_ll [-s] [-f] [-o opt,...] MOUNTPOINT
 *
 * -s selects libfuse's single-threaded loop (fuse_session_loop); without it
 * the multi-threaded loop (fuse_session_loop_mt) runs.  One mutex guards all
 * state, so both loops run the same code.
 *
 * Layout:
 *   - inodes live in a table indexed by inode number; numbers are never reused;
 *   - names live in one hash table keyed by (parent inode, name);
 *   - each directory also keeps its entries in an array ordered by a
 *     per-directory cookie that only grows, and readdir offsets are cookies,
 *     so entries created or removed during a listing never make it skip or
 *     repeat another entry.
 *
 * Build: cc -O2 $(pkg-config --cflags fuse3) memfs_ll.c $(pkg-config --libs fuse3)
 */
#define FUSE_USE_VERSION 312
#define _GNU_SOURCE

#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT 0.0
#define FIRST_CHILD_COOKIE 3 /* 1 and 2 are "." and ".." */

struct dentry {
	struct dentry *hnext; /* hash chain */
	fuse_ino_t parent;
	fuse_ino_t ino;
	uint64_t cookie;      /* position in the parent's listing */
	size_t namelen;
	char name[];
};

struct node {
	fuse_ino_t ino;
	mode_t mode;
	nlink_t nlink;
	uid_t uid;
	gid_t gid;
	struct timespec atime, mtime, ctime;
	uint64_t nlookup;
	/* regular files */
	char *data;
	size_t size, cap;
	/* directories */
	fuse_ino_t parent;
	struct dentry **ents; /* ordered by cookie */
	size_t nents, capents;
	uint64_t next_cookie;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct node **inodes;
static size_t ninodes_cap;
static fuse_ino_t next_ino = FUSE_ROOT_ID;
static size_t live_inodes;
static struct dentry **htab;
static size_t hmask, hcount;

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n);
	if (!q && n) {
		fprintf(stderr, "memfs_ll: out of memory\n");
		abort();
	}
	return q;
}

/* ---------------------------------------------------------------- names */

static size_t hash_name(fuse_ino_t parent, const char *name, size_t len)
{
	uint64_t h = 1469598103934665603ULL ^ (parent * 0x9e3779b97f4a7c15ULL);
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)name[i];
		h *= 1099511628211ULL;
	}
	return (size_t)(h ^ (h >> 29));
}

static void htab_grow(void)
{
	size_t newsize = (hmask + 1) * 2;
	struct dentry **nt = calloc(newsize, sizeof(*nt));
	if (!nt)
		abort();
	for (size_t i = 0; i <= hmask; i++) {
		struct dentry *d = htab[i];
		while (d) {
			struct dentry *next = d->hnext;
			size_t b = hash_name(d->parent, d->name, d->namelen) & (newsize - 1);
			d->hnext = nt[b];
			nt[b] = d;
			d = next;
		}
	}
	free(htab);
	htab = nt;
	hmask = newsize - 1;
}

static struct dentry **dentry_slot(fuse_ino_t parent, const char *name)
{
	size_t len = strlen(name);
	struct dentry **pp = &htab[hash_name(parent, name, len) & hmask];
	for (; *pp; pp = &(*pp)->hnext) {
		struct dentry *d = *pp;
		if (d->parent == parent && d->namelen == len && memcmp(d->name, name, len) == 0)
			break;
	}
	return pp;
}

static struct node *get_node(fuse_ino_t ino)
{
	return ino < ninodes_cap ? inodes[ino] : NULL;
}

/* Binary search: index of the first entry of dir whose cookie is > after. */
static size_t first_after(const struct node *dir, uint64_t after)
{
	size_t lo = 0, hi = dir->nents;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (dir->ents[mid]->cookie <= after)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void link_name(struct node *dir, const char *name, fuse_ino_t ino)
{
	size_t len = strlen(name);
	struct dentry *d = xrealloc(NULL, sizeof(*d) + len + 1);
	d->parent = dir->ino;
	d->ino = ino;
	d->cookie = dir->next_cookie++;
	d->namelen = len;
	memcpy(d->name, name, len + 1);
	size_t b = hash_name(dir->ino, name, len) & hmask;
	d->hnext = htab[b];
	htab[b] = d;
	if (++hcount > hmask + 1)
		htab_grow();
	if (dir->nents == dir->capents) {
		dir->capents = dir->capents ? dir->capents * 2 : 16;
		dir->ents = xrealloc(dir->ents, dir->capents * sizeof(*dir->ents));
	}
	dir->ents[dir->nents++] = d; /* cookies only grow: the array stays sorted */
}

/* Remove *slot (a dentry of dir) from the hash table and from dir's listing. */
static void unlink_slot(struct node *dir, struct dentry **slot)
{
	struct dentry *d = *slot;
	*slot = d->hnext;
	hcount--;
	size_t i = first_after(dir, d->cookie - 1);
	memmove(&dir->ents[i], &dir->ents[i + 1], (dir->nents - i - 1) * sizeof(*dir->ents));
	dir->nents--;
	free(d);
}

/* --------------------------------------------------------------- inodes */

static void now(struct timespec *ts)
{
	clock_gettime(CLOCK_REALTIME, ts);
}

static struct node *new_node(mode_t mode, const struct fuse_ctx *ctx)
{
	struct node *n = xrealloc(NULL, sizeof(*n));
	memset(n, 0, sizeof(*n));
	n->ino = next_ino++;
	n->mode = mode;
	n->nlink = S_ISDIR(mode) ? 2 : 1;
	n->uid = ctx ? ctx->uid : getuid();
	n->gid = ctx ? ctx->gid : getgid();
	now(&n->atime);
	n->mtime = n->ctime = n->atime;
	n->next_cookie = FIRST_CHILD_COOKIE;
	if (n->ino >= ninodes_cap) {
		size_t cap = ninodes_cap ? ninodes_cap * 2 : 1024;
		inodes = xrealloc(inodes, cap * sizeof(*inodes));
		memset(inodes + ninodes_cap, 0, (cap - ninodes_cap) * sizeof(*inodes));
		ninodes_cap = cap;
	}
	inodes[n->ino] = n;
	live_inodes++;
	return n;
}

static void maybe_free(struct node *n)
{
	if (n->nlookup || n->nlink || n->ino == FUSE_ROOT_ID)
		return;
	inodes[n->ino] = NULL;
	live_inodes--;
	free(n->data);
	free(n->ents);
	free(n);
}

static void fill_stat(const struct node *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_mode = n->mode;
	st->st_nlink = n->nlink;
	st->st_uid = n->uid;
	st->st_gid = n->gid;
	st->st_size = S_ISDIR(n->mode) ? 4096 : (off_t)n->size;
	st->st_blksize = 4096;
	st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
	st->st_atim = n->atime;
	st->st_mtim = n->mtime;
	st->st_ctim = n->ctime;
}

static void fill_entry(struct node *n, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = n->ino;
	e->generation = 1;
	e->attr_timeout = TIMEOUT;
	e->entry_timeout = TIMEOUT;
	fill_stat(n, &e->attr);
}

static int set_size(struct node *n, size_t size)
{
	if (size > n->cap) {
		size_t cap = n->cap ? n->cap : 4096;
		while (cap < size)
			cap *= 2;
		char *p = realloc(n->data, cap);
		if (!p)
			return ENOSPC;
		n->data = p;
		n->cap = cap;
	}
	if (size > n->size)
		memset(n->data + n->size, 0, size - n->size);
	n->size = size;
	return 0;
}

/* ----------------------------------------------------------- operations */

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	int err = 0;
	pthread_mutex_lock(&lock);
	struct node *dir = get_node(parent);
	struct node *n = NULL;
	if (!dir || !S_ISDIR(dir->mode)) {
		err = ENOTDIR;
	} else if (strcmp(name, ".") == 0) {
		n = dir;
	} else if (strcmp(name, "..") == 0) {
		n = get_node(dir->parent);
	} else {
		struct dentry *d = *dentry_slot(parent, name);
		n = d ? get_node(d->ino) : NULL;
	}
	if (!err && !n)
		err = ENOENT;
	if (!err) {
		n->nlookup++;
		fill_entry(n, &e);
	}
	pthread_mutex_unlock(&lock);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_entry(req, &e);
}

static void forget_locked(fuse_ino_t ino, uint64_t nlookup)
{
	struct node *n = get_node(ino);
	if (!n)
		return;
	n->nlookup = nlookup > n->nlookup ? 0 : n->nlookup - nlookup;
	maybe_free(n);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	pthread_mutex_lock(&lock);
	forget_locked(ino, nlookup);
	pthread_mutex_unlock(&lock);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < count; i++)
		forget_locked(forgets[i].ino, forgets[i].nlookup);
	pthread_mutex_unlock(&lock);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct stat st;
	pthread_mutex_lock(&lock);
	struct node *n = get_node(ino);
	if (n)
		fill_stat(n, &st);
	pthread_mutex_unlock(&lock);
	if (n)
		fuse_reply_attr(req, &st, TIMEOUT);
	else
		fuse_reply_err(req, ENOENT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	(void)fi;
	struct stat st;
	int err = 0;
	pthread_mutex_lock(&lock);
	struct node *n = get_node(ino);
	if (!n) {
		err = ENOENT;
		goto out;
	}
	struct timespec t;
	now(&t);
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (S_ISDIR(n->mode)) {
			err = EISDIR;
			goto out;
		}
		err = set_size(n, (size_t)attr->st_size);
		if (err)
			goto out;
		n->mtime = t;
	}
	if (to_set & FUSE_SET_ATTR_MODE)
		n->mode = (n->mode & S_IFMT) | (attr->st_mode & 07777);
	if (to_set & FUSE_SET_ATTR_UID)
		n->uid = attr->st_uid;
	if (to_set & FUSE_SET_ATTR_GID)
		n->gid = attr->st_gid;
	if (to_set & FUSE_SET_ATTR_ATIME_NOW)
		n->atime = t;
	else if (to_set & FUSE_SET_ATTR_ATIME)
		n->atime = attr->st_atim;
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		n->mtime = t;
	else if (to_set & FUSE_SET_ATTR_MTIME)
		n->mtime = attr->st_mtim;
	n->ctime = (to_set & FUSE_SET_ATTR_CTIME) ? attr->st_ctim : t;
	fill_stat(n, &st);
out:
	pthread_mutex_unlock(&lock);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_attr(req, &st, TIMEOUT);
}

/* Create name in parent with mode; on success fill e (lookup count +1). */
static int make_node(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     struct fuse_entry_param *e)
{
	struct node *dir = get_node(parent);
	if (!dir || !S_ISDIR(dir->mode))
		return ENOTDIR;
	if (strlen(name) > 255)
		return ENAMETOOLONG;
	if (*dentry_slot(parent, name))
		return EEXIST;
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct node *n = new_node(mode & ~(ctx->umask & 0777), ctx);
	if (S_ISDIR(mode)) {
		n->parent = parent;
		dir->nlink++;
	}
	link_name(dir, name, n->ino);
	now(&dir->mtime);
	dir->ctime = dir->mtime;
	n->nlookup = 1;
	fill_entry(n, e);
	return 0;
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	(void)rdev;
	struct fuse_entry_param e;
	int err = S_ISREG(mode) ? 0 : EPERM;
	pthread_mutex_lock(&lock);
	if (!err)
		err = make_node(req, parent, name, mode, &e);
	pthread_mutex_unlock(&lock);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_entry(req, &e);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct fuse_entry_param e;
	pthread_mutex_lock(&lock);
	int err = make_node(req, parent, name, S_IFDIR | (mode & 07777), &e);
	pthread_mutex_unlock(&lock);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_entry(req, &e);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct fuse_entry_param e;
	pthread_mutex_lock(&lock);
	int err = make_node(req, parent, name, S_IFREG | (mode & 07777), &e);
	pthread_mutex_unlock(&lock);
	if (err) {
		fuse_reply_err(req, err);
		return;
	}
	fi->fh = e.ino;
	fuse_reply_create(req, &e, fi);
}

static int remove_name(fuse_ino_t parent, const char *name, int want_dir)
{
	struct node *dir = get_node(parent);
	if (!dir || !S_ISDIR(dir->mode))
		return ENOTDIR;
	struct dentry **slot = dentry_slot(parent, name);
	if (!*slot)
		return ENOENT;
	struct node *n = get_node((*slot)->ino);
	if (want_dir && !S_ISDIR(n->mode))
		return ENOTDIR;
	if (!want_dir && S_ISDIR(n->mode))
		return EISDIR;
	if (want_dir && n->nents)
		return ENOTEMPTY;
	unlink_slot(dir, slot);
	now(&dir->mtime);
	dir->ctime = n->ctime = dir->mtime;
	if (want_dir) {
		dir->nlink--;
		n->nlink = 0;
	} else {
		n->nlink--;
	}
	maybe_free(n);
	return 0;
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	pthread_mutex_lock(&lock);
	int err = remove_name(parent, name, 0);
	pthread_mutex_unlock(&lock);
	fuse_reply_err(req, err);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	pthread_mutex_lock(&lock);
	int err = remove_name(parent, name, 1);
	pthread_mutex_unlock(&lock);
	fuse_reply_err(req, err);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	int err = 0;
	if (flags & ~RENAME_NOREPLACE) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	pthread_mutex_lock(&lock);
	struct node *src = get_node(parent), *dst = get_node(newparent);
	struct dentry **slot = src ? dentry_slot(parent, name) : NULL;
	if (!src || !dst || !S_ISDIR(dst->mode)) {
		err = ENOTDIR;
		goto out;
	}
	if (!*slot) {
		err = ENOENT;
		goto out;
	}
	fuse_ino_t ino = (*slot)->ino;
	struct node *n = get_node(ino);
	struct dentry *old = *dentry_slot(newparent, newname);
	if (old && old->ino == ino)
		goto out;
	if (old) {
		if (flags & RENAME_NOREPLACE) {
			err = EEXIST;
			goto out;
		}
		err = remove_name(newparent, newname, S_ISDIR(get_node(old->ino)->mode));
		if (err)
			goto out;
		slot = dentry_slot(parent, name); /* the table may have changed */
	}
	unlink_slot(src, slot);
	link_name(dst, newname, ino);
	if (S_ISDIR(n->mode) && parent != newparent) {
		src->nlink--;
		dst->nlink++;
		n->parent = newparent;
	}
	now(&n->ctime);
	src->mtime = src->ctime = dst->mtime = dst->ctime = n->ctime;
out:
	pthread_mutex_unlock(&lock);
	fuse_reply_err(req, err);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int err = 0;
	pthread_mutex_lock(&lock);
	struct node *n = get_node(ino);
	if (!n)
		err = ENOENT;
	else if (S_ISDIR(n->mode))
		err = EISDIR;
	else if ((fi->flags & O_TRUNC) && (fi->flags & O_ACCMODE) != O_RDONLY)
		err = set_size(n, 0);
	pthread_mutex_unlock(&lock);
	fi->fh = ino;
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	(void)fi;
	pthread_mutex_lock(&lock);
	struct node *n = get_node(ino);
	if (!n) {
		pthread_mutex_unlock(&lock);
		fuse_reply_err(req, ENOENT);
		return;
	}
	size_t len = 0;
	if ((size_t)off < n->size)
		len = n->size - (size_t)off < size ? n->size - (size_t)off : size;
	/* Reply under the lock: a concurrent write may move the buffer. */
	fuse_reply_buf(req, len ? n->data + off : NULL, len);
	pthread_mutex_unlock(&lock);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)fi;
	int err = 0;
	pthread_mutex_lock(&lock);
	struct node *n = get_node(ino);
	if (!n)
		err = ENOENT;
	else if ((size_t)off + size > n->size)
		err = set_size(n, (size_t)off + size);
	if (!err) {
		memcpy(n->data + off, buf, size);
		now(&n->mtime);
		n->ctime = n->mtime;
	}
	pthread_mutex_unlock(&lock);
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_write(req, size);
}

static void op_ok(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)datasync;
	op_ok(req, ino, fi);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int err = 0;
	pthread_mutex_lock(&lock);
	struct node *n = get_node(ino);
	if (!n)
		err = ENOENT;
	else if (!S_ISDIR(n->mode))
		err = ENOTDIR;
	pthread_mutex_unlock(&lock);
	fi->fh = ino;
	if (err)
		fuse_reply_err(req, err);
	else
		fuse_reply_open(req, fi);
}

/* READDIR and READDIRPLUS: offsets are cookies (1 ".", 2 "..", then children). */
static void list_dir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus)
{
	char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t used = 0;
	pthread_mutex_lock(&lock);
	struct node *dir = get_node(ino);
	if (!dir || !S_ISDIR(dir->mode)) {
		pthread_mutex_unlock(&lock);
		free(buf);
		fuse_reply_err(req, dir ? ENOTDIR : ENOENT);
		return;
	}
	struct fuse_entry_param e;
	for (uint64_t cookie = (uint64_t)off + 1; cookie < FIRST_CHILD_COOKIE; cookie++) {
		/* "." and "..": nodeid 0, so the kernel takes no reference. */
		memset(&e, 0, sizeof(e));
		e.attr.st_ino = cookie == 1 ? dir->ino : dir->parent;
		e.attr.st_mode = S_IFDIR;
		const char *name = cookie == 1 ? "." : "..";
		size_t need = plus ? fuse_add_direntry_plus(req, buf + used, size - used, name, &e,
							    (off_t)cookie)
				   : fuse_add_direntry(req, buf + used, size - used, name, &e.attr,
						       (off_t)cookie);
		if (need > size - used)
			goto done;
		used += need;
	}
	for (size_t i = first_after(dir, (uint64_t)off); i < dir->nents; i++) {
		struct dentry *d = dir->ents[i];
		struct node *n = get_node(d->ino);
		size_t need;
		fill_entry(n, &e);
		if (plus)
			need = fuse_add_direntry_plus(req, buf + used, size - used, d->name, &e,
						      (off_t)d->cookie);
		else
			need = fuse_add_direntry(req, buf + used, size - used, d->name, &e.attr,
						 (off_t)d->cookie);
		if (need > size - used)
			break;
		used += need;
		if (plus)
			n->nlookup++;
	}
done:
	pthread_mutex_unlock(&lock);
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)fi;
	list_dir(req, ino, size, off, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	(void)fi;
	list_dir(req, ino, size, off, 1);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct statvfs sv;
	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = sv.f_frsize = 4096;
	sv.f_blocks = sv.f_bfree = sv.f_bavail = 1UL << 28;
	pthread_mutex_lock(&lock);
	sv.f_files = live_inodes + (1UL << 20);
	pthread_mutex_unlock(&lock);
	sv.f_ffree = sv.f_favail = 1UL << 20;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops memfs_ops = {
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.rename = op_rename,
	.create = op_create,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.flush = op_ok,
	.release = op_ok,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_ok,
	.statfs = op_statfs,
};

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	int ret = 1;

	if (fuse_parse_cmdline(&args, &opts) != 0)
		return 1;
	if (opts.show_help || !opts.mountpoint) {
		printf("usage: %s [-s] [-f] [-o opt,...] MOUNTPOINT\n", argv[0]);
		fuse_cmdline_help();
		fuse_lowlevel_help();
		ret = opts.show_help ? 0 : 1;
		goto out_args;
	}

	hmask = 1023;
	htab = calloc(hmask + 1, sizeof(*htab));
	struct node *root = new_node(S_IFDIR | 0755, NULL);
	root->parent = root->ino;

	struct fuse_session *se = fuse_session_new(&args, &memfs_ops, sizeof(memfs_ops), NULL);
	if (!se)
		goto out_args;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (fuse_session_mount(se, opts.mountpoint) != 0)
		goto out_signals;
	fuse_daemonize(opts.foreground);
	if (opts.singlethread) {
		ret = fuse_session_loop(se);
	} else {
		struct fuse_loop_config *cfg = fuse_loop_cfg_create();
		fuse_loop_cfg_set_clone_fd(cfg, (unsigned int)opts.clone_fd);
		if (opts.max_idle_threads != UINT_MAX) /* UINT_MAX: not given */
			fuse_loop_cfg_set_idle_threads(cfg, opts.max_idle_threads);
		fuse_loop_cfg_set_max_threads(cfg, opts.max_threads);
		ret = fuse_session_loop_mt(se, cfg);
		fuse_loop_cfg_destroy(cfg);
	}
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_args:
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	return ret ? 1 : 0;
}
