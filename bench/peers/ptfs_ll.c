/*
 * ptfs_ll: a passthrough filesystem on libfuse3's low-level API.
 *
 * Written for fusewire's benchmark (bench/run.py) as the C reference point
 * for passthrough servers: it mirrors SOURCE at MOUNTPOINT, with every entry
 * and attribute timeout set to 0. It keeps no page cache settings of its own
 * (no direct_io, no kernel passthrough), so reads and writes take the same
 * path through the server as the other passthroughs in the benchmark.
 *
 *   ptfs_ll SOURCE [-s] [-f] [-o opt,...] MOUNTPOINT
 *
 * -s selects libfuse's single-threaded loop, else the multi-threaded one.
 *
 * Each inode the kernel knows holds an O_PATH descriptor of the source file,
 * found again by (st_dev, st_ino) so that hard links and repeated lookups
 * share one inode. Inode numbers index a table and are never reused. One
 * mutex guards the table; file I/O runs outside it on per-open descriptors.
 *
 * Build: cc -O2 $(pkg-config --cflags fuse3) ptfs_ll.c $(pkg-config --libs fuse3)
 */
#define FUSE_USE_VERSION 312
#define _GNU_SOURCE

#include <fuse_lowlevel.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <unistd.h>

#define TIMEOUT 0.0

struct node {
	struct node *hnext; /* chain in the (dev, ino) table */
	fuse_ino_t ino;
	int fd;             /* O_PATH descriptor of the source file */
	dev_t dev;
	ino_t src_ino;
	uint64_t nlookup;
};

struct dir_handle {
	DIR *dp;
	off_t offset; /* where dp stands, as READDIR offsets count */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct node **inodes;
static size_t inodes_cap;
static fuse_ino_t next_ino = FUSE_ROOT_ID;
static struct node **htab;
static size_t hmask = 4095, hcount;

static size_t hash_id(dev_t dev, ino_t ino)
{
	uint64_t h = (uint64_t)ino * 0x9e3779b97f4a7c15ULL ^ (uint64_t)dev;
	return (size_t)(h ^ (h >> 31));
}

static void hash_insert(struct node *n)
{
	size_t b = hash_id(n->dev, n->src_ino) & hmask;
	n->hnext = htab[b];
	htab[b] = n;
	hcount++;
	if (hcount > hmask + 1) {
		size_t size = (hmask + 1) * 2;
		struct node **t = calloc(size, sizeof(*t));
		if (!t)
			abort();
		for (size_t i = 0; i <= hmask; i++) {
			for (struct node *m = htab[i], *next; m; m = next) {
				next = m->hnext;
				size_t nb = hash_id(m->dev, m->src_ino) & (size - 1);
				m->hnext = t[nb];
				t[nb] = m;
			}
		}
		free(htab);
		htab = t;
		hmask = size - 1;
	}
}

static void hash_remove(struct node *n)
{
	struct node **pp = &htab[hash_id(n->dev, n->src_ino) & hmask];
	while (*pp != n)
		pp = &(*pp)->hnext;
	*pp = n->hnext;
	hcount--;
}

static struct node *get_node(fuse_ino_t ino)
{
	return ino < inodes_cap ? inodes[ino] : NULL;
}

static int node_fd(fuse_ino_t ino)
{
	pthread_mutex_lock(&lock);
	struct node *n = get_node(ino);
	int fd = n ? n->fd : -1;
	pthread_mutex_unlock(&lock);
	return fd;
}

/* Register fd (an O_PATH descriptor of a file with stat *st): the node's
 * inode number, with its lookup count raised by one. Takes ownership of fd. */
static fuse_ino_t remember(int fd, const struct stat *st)
{
	pthread_mutex_lock(&lock);
	struct node *n = htab[hash_id(st->st_dev, st->st_ino) & hmask];
	while (n && !(n->dev == st->st_dev && n->src_ino == st->st_ino))
		n = n->hnext;
	if (n) {
		close(fd);
	} else {
		n = calloc(1, sizeof(*n));
		if (!n)
			abort();
		n->fd = fd;
		n->dev = st->st_dev;
		n->src_ino = st->st_ino;
		n->ino = next_ino++;
		if (n->ino >= inodes_cap) {
			size_t cap = inodes_cap ? inodes_cap * 2 : 4096;
			struct node **t = realloc(inodes, cap * sizeof(*t));
			if (!t)
				abort();
			memset(t + inodes_cap, 0, (cap - inodes_cap) * sizeof(*t));
			inodes = t;
			inodes_cap = cap;
		}
		inodes[n->ino] = n;
		hash_insert(n);
	}
	n->nlookup++;
	fuse_ino_t ino = n->ino;
	pthread_mutex_unlock(&lock);
	return ino;
}

static void forget_locked(fuse_ino_t ino, uint64_t count)
{
	struct node *n = get_node(ino);
	if (!n || ino == FUSE_ROOT_ID)
		return;
	n->nlookup = count > n->nlookup ? 0 : n->nlookup - count;
	if (n->nlookup == 0) {
		inodes[ino] = NULL;
		hash_remove(n);
		close(n->fd);
		free(n);
	}
}

static void forget_one(fuse_ino_t ino, uint64_t count)
{
	pthread_mutex_lock(&lock);
	forget_locked(ino, count);
	pthread_mutex_unlock(&lock);
}

/* Look name up in parent: fill e (lookup count +1) or return an errno. */
static int do_lookup(fuse_ino_t parent, const char *name, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->attr_timeout = TIMEOUT;
	e->entry_timeout = TIMEOUT;
	int pfd = node_fd(parent);
	if (pfd < 0)
		return ENOENT;
	int fd = openat(pfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno;
	if (fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0) {
		int err = errno;
		close(fd);
		return err;
	}
	e->ino = remember(fd, &e->attr);
	e->generation = 1;
	return 0;
}

static void reply_entry_or_err(fuse_req_t req, int err, struct fuse_entry_param *e)
{
	if (err)
		fuse_reply_err(req, err);
	else if (fuse_reply_entry(req, e) != 0)
		forget_one(e->ino, 1);
}

static void proc_path(char *buf, size_t size, int fd)
{
	snprintf(buf, size, "/proc/self/fd/%d", fd);
}

/* ----------------------------------------------------------- operations */

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	reply_entry_or_err(req, do_lookup(parent, name, &e), &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	forget_one(ino, nlookup);
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
	int fd = node_fd(ino);
	if (fd < 0)
		fuse_reply_err(req, ENOENT);
	else if (fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_attr(req, &st, TIMEOUT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	char path[64];
	int fd = node_fd(ino);
	if (fd < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	proc_path(path, sizeof(path), fd);
	int res = 0;
	if (to_set & FUSE_SET_ATTR_MODE)
		res = fi ? fchmod((int)fi->fh, attr->st_mode) : chmod(path, attr->st_mode);
	if (!res && (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))) {
		uid_t uid = (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t gid = (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
		res = fchownat(fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
	}
	if (!res && (to_set & FUSE_SET_ATTR_SIZE))
		res = fi ? ftruncate((int)fi->fh, attr->st_size) : truncate(path, attr->st_size);
	if (!res && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME))) {
		struct timespec tv[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_OMIT}};
		if (to_set & FUSE_SET_ATTR_ATIME_NOW)
			tv[0].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_ATIME)
			tv[0] = attr->st_atim;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			tv[1].tv_nsec = UTIME_NOW;
		else if (to_set & FUSE_SET_ATTR_MTIME)
			tv[1] = attr->st_mtim;
		res = fi ? futimens((int)fi->fh, tv) : utimensat(AT_FDCWD, path, tv, 0);
	}
	if (res)
		fuse_reply_err(req, errno);
	else
		op_getattr(req, ino, fi);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		     dev_t rdev)
{
	struct fuse_entry_param e;
	int pfd = node_fd(parent);
	int err = pfd < 0 ? ENOENT : mknodat(pfd, name, mode, rdev) ? errno : 0;
	if (!err)
		err = do_lookup(parent, name, &e);
	reply_entry_or_err(req, err, &e);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct fuse_entry_param e;
	int pfd = node_fd(parent);
	int err = pfd < 0 ? ENOENT : mkdirat(pfd, name, mode) ? errno : 0;
	if (!err)
		err = do_lookup(parent, name, &e);
	reply_entry_or_err(req, err, &e);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	int pfd = node_fd(parent);
	fuse_reply_err(req, pfd < 0 ? ENOENT : unlinkat(pfd, name, 0) ? errno : 0);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	int pfd = node_fd(parent);
	fuse_reply_err(req, pfd < 0 ? ENOENT : unlinkat(pfd, name, AT_REMOVEDIR) ? errno : 0);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	int pfd = node_fd(parent), nfd = node_fd(newparent);
	if (pfd < 0 || nfd < 0)
		fuse_reply_err(req, ENOENT);
	else
		fuse_reply_err(req, renameat2(pfd, name, nfd, newname, flags) ? errno : 0);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	struct fuse_entry_param e;
	int pfd = node_fd(parent);
	if (pfd < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	int fd = openat(pfd, name, (fi->flags | O_CREAT | O_CLOEXEC) & ~O_NOFOLLOW, mode);
	if (fd < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	int err = do_lookup(parent, name, &e);
	if (err) {
		close(fd);
		fuse_reply_err(req, err);
		return;
	}
	fi->fh = (uint64_t)fd;
	if (fuse_reply_create(req, &e, fi) != 0) {
		close(fd);
		forget_one(e.ino, 1);
	}
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	char path[64];
	int nfd = node_fd(ino);
	if (nfd < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	proc_path(path, sizeof(path), nfd);
	int fd = open(path, (fi->flags | O_CLOEXEC) & ~(O_NOFOLLOW | O_CREAT | O_EXCL));
	if (fd < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	fi->fh = (uint64_t)fd;
	if (fuse_reply_open(req, fi) != 0)
		close(fd);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	(void)ino;
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = (int)fi->fh;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	(void)ino;
	ssize_t n = pwrite((int)fi->fh, buf, size, off);
	if (n < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_write(req, (size_t)n);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	/* close() of a duplicate: what a close() of the source file would report. */
	int fd = dup((int)fi->fh);
	fuse_reply_err(req, fd < 0 ? errno : close(fd) ? errno : 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	close((int)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	int fd = (int)fi->fh;
	fuse_reply_err(req, (datasync ? fdatasync(fd) : fsync(fd)) ? errno : 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int nfd = node_fd(ino);
	if (nfd < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	int fd = openat(nfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dir_handle *dh = calloc(1, sizeof(*dh));
	DIR *dp = fd < 0 ? NULL : fdopendir(fd);
	if (!dh || !dp) {
		int err = fd < 0 ? errno : ENOMEM;
		if (dp)
			closedir(dp);
		else if (fd >= 0)
			close(fd);
		free(dh);
		fuse_reply_err(req, err);
		return;
	}
	dh->dp = dp;
	fi->fh = (uint64_t)(uintptr_t)dh;
	if (fuse_reply_open(req, fi) != 0) {
		closedir(dp);
		free(dh);
	}
}

static void list_dir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi, int plus)
{
	struct dir_handle *dh = (struct dir_handle *)(uintptr_t)fi->fh;
	char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (off != dh->offset) {
		seekdir(dh->dp, off);
		dh->offset = off;
	}
	size_t used = 0;
	int err = 0;
	for (;;) {
		errno = 0;
		long pos = telldir(dh->dp);
		struct dirent *d = readdir(dh->dp);
		if (!d) {
			err = errno; /* 0 at the end of the directory */
			break;
		}
		struct fuse_entry_param e;
		memset(&e, 0, sizeof(e));
		e.attr.st_ino = d->d_ino;
		e.attr.st_mode = (mode_t)d->d_type << 12;
		int dots = strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0;
		size_t need;
		if (plus) {
			if (!dots) {
				err = do_lookup(ino, d->d_name, &e);
				if (err == ENOENT) { /* removed since the listing began */
					err = 0;
					dh->offset = d->d_off;
					continue;
				}
				if (err)
					break;
			}
			need = fuse_add_direntry_plus(req, buf + used, size - used, d->d_name, &e,
						      d->d_off);
		} else {
			need = fuse_add_direntry(req, buf + used, size - used, d->d_name, &e.attr,
						 d->d_off);
		}
		if (need > size - used) {
			if (plus && e.ino)
				forget_one(e.ino, 1);
			seekdir(dh->dp, pos); /* this entry goes in the next reply */
			break;
		}
		used += need;
		dh->offset = d->d_off;
	}
	if (err && used == 0)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	list_dir(req, ino, size, off, fi, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	list_dir(req, ino, size, off, fi, 1);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	struct dir_handle *dh = (struct dir_handle *)(uintptr_t)fi->fh;
	closedir(dh->dp);
	free(dh);
	fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;
	int fd = node_fd(ino);
	if (fd < 0)
		fuse_reply_err(req, ENOENT);
	else if (fstatvfs(fd, &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

static const struct fuse_lowlevel_ops ptfs_ops = {
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
	.flush = op_flush,
	.release = op_release,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.statfs = op_statfs,
};

int main(int argc, char *argv[])
{
	if (argc < 2 || argv[1][0] == '-') {
		fprintf(stderr, "usage: %s SOURCE [-s] [-f] [-o opt,...] MOUNTPOINT\n", argv[0]);
		return 1;
	}
	const char *source = argv[1];
	argv[1] = argv[0]; /* drop SOURCE: libfuse parses the rest */
	struct fuse_args args = FUSE_ARGS_INIT(argc - 1, argv + 1);
	struct fuse_cmdline_opts opts;
	int ret = 1;

	if (fuse_parse_cmdline(&args, &opts) != 0)
		return 1;
	if (opts.show_help || !opts.mountpoint) {
		fuse_cmdline_help();
		fuse_lowlevel_help();
		ret = opts.show_help ? 0 : 1;
		goto out_args;
	}
	umask(0); /* the kernel has applied the caller's umask already */

	htab = calloc(hmask + 1, sizeof(*htab));
	int rootfd = open(source, O_PATH | O_DIRECTORY | O_CLOEXEC);
	struct stat st;
	if (!htab || rootfd < 0 || fstat(rootfd, &st) < 0) {
		perror(source);
		goto out_args;
	}
	if (remember(rootfd, &st) != FUSE_ROOT_ID)
		abort();

	struct fuse_session *se = fuse_session_new(&args, &ptfs_ops, sizeof(ptfs_ops), NULL);
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
