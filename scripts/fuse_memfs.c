/*
 * Baseline for scripts/bench_fuse.ts: a read-only libfuse low-level server
 * holding the benchmark's data in memory.
 *
 *   /big               BIG_SIZE bytes, byte i from the xorshift32 stream of
 *                      scripts/bench_fuse.ts (seed 1)
 *   /tree/dNNN/fMMM    TREE_DIRS x TREE_FILES files, contents "dNNN/fMMM\n"
 *
 * Attributes follow the tvix-store mount (modes 0444/0555, times 0,
 * infinite cache timeouts) so both answer the same questions.
 *
 * Build: gcc -O2 -o fuse_memfs fuse_memfs.c $(pkg-config fuse3 --cflags --libs)
 * Run:   fuse_memfs MOUNTPOINT [-t THREADS]   (stop with SIGTERM or fusermount3 -u)
 */
#define FUSE_USE_VERSION 314
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define BIG_SIZE (1ull << 30)
#define TREE_DIRS 100
#define TREE_FILES 100
#define INO_BIG 2
#define INO_TREE 3
#define INO_DIR0 100
#define INO_FILE0 100000
#define FOREVER 4294967295.0

static unsigned char *big;

static int is_dir(fuse_ino_t ino) {
  return ino == FUSE_ROOT_ID || ino == INO_TREE || (ino >= INO_DIR0 && ino < INO_DIR0 + TREE_DIRS);
}
static int is_file(fuse_ino_t ino) {
  return ino == INO_BIG || (ino >= INO_FILE0 && ino < INO_FILE0 + TREE_DIRS * TREE_FILES);
}

static void file_contents(fuse_ino_t ino, char *out) {
  unsigned n = (unsigned)(ino - INO_FILE0);
  sprintf(out, "d%03u/f%03u\n", n / TREE_FILES, n % TREE_FILES);
}

static int stat_of(fuse_ino_t ino, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_nlink = 1;
  st->st_blocks = 1024;
  if (is_dir(ino)) {
    st->st_mode = S_IFDIR | 0555;
    st->st_size = ino == FUSE_ROOT_ID ? 0 : ino == INO_TREE ? TREE_DIRS : TREE_FILES;
  } else if (is_file(ino)) {
    st->st_mode = S_IFREG | 0444;
    st->st_size = ino == INO_BIG ? (off_t)BIG_SIZE : 10;
  } else {
    return -1;
  }
  return 0;
}

/* Name of child i of dir (0-based), its inode; 0 when past the end. */
static int child(fuse_ino_t dir, unsigned i, char *name, fuse_ino_t *ino) {
  if (dir == FUSE_ROOT_ID) {
    if (i == 0) { strcpy(name, "big"); *ino = INO_BIG; return 1; }
    if (i == 1) { strcpy(name, "tree"); *ino = INO_TREE; return 1; }
    return 0;
  }
  if (dir == INO_TREE) {
    if (i >= TREE_DIRS) return 0;
    sprintf(name, "d%03u", i);
    *ino = INO_DIR0 + i;
    return 1;
  }
  if (i >= TREE_FILES) return 0;
  sprintf(name, "f%03u", i);
  *ino = INO_FILE0 + (dir - INO_DIR0) * TREE_FILES + i;
  return 1;
}

static void entry_of(fuse_ino_t ino, struct fuse_entry_param *e) {
  memset(e, 0, sizeof *e);
  e->ino = ino;
  e->attr_timeout = FOREVER;
  e->entry_timeout = FOREVER;
  stat_of(ino, &e->attr);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  if (!is_dir(parent)) { fuse_reply_err(req, ENOTDIR); return; }
  char n[32];
  fuse_ino_t ino;
  /* Names are fixed-width numbers: compute the index instead of scanning. */
  if (parent != FUSE_ROOT_ID && strlen(name) == 4 && (name[0] == 'd' || name[0] == 'f')) {
    unsigned i = (unsigned)atoi(name + 1);
    if (child(parent, i, n, &ino) && !strcmp(n, name)) {
      struct fuse_entry_param e;
      entry_of(ino, &e);
      fuse_reply_entry(req, &e);
      return;
    }
  }
  for (unsigned i = 0; child(parent, i, n, &ino); i++) {
    if (!strcmp(n, name)) {
      struct fuse_entry_param e;
      entry_of(ino, &e);
      fuse_reply_entry(req, &e);
      return;
    }
  }
  fuse_reply_err(req, ENOENT);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  struct stat st;
  if (stat_of(ino, &st)) fuse_reply_err(req, ENOENT);
  else fuse_reply_attr(req, &st, FOREVER);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (!is_file(ino)) { fuse_reply_err(req, EISDIR); return; }
  if ((fi->flags & O_ACCMODE) != O_RDONLY) { fuse_reply_err(req, EROFS); return; }
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi) {
  (void)fi;
  char small[16];
  const unsigned char *src;
  size_t len;
  if (ino == INO_BIG) {
    src = big;
    len = BIG_SIZE;
  } else {
    file_contents(ino, small);
    src = (const unsigned char *)small;
    len = 10;
  }
  if ((size_t)off >= len) { fuse_reply_buf(req, NULL, 0); return; }
  if (size > len - off) size = len - off;
  fuse_reply_buf(req, (const char *)src + off, size);
}

static void readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus) {
  if (!is_dir(ino)) { fuse_reply_err(req, ENOTDIR); return; }
  char *buf = malloc(size);
  size_t pos = 0;
  char name[32];
  fuse_ino_t cino;
  for (unsigned i = (unsigned)off; child(ino, i, name, &cino); i++) {
    size_t used;
    if (plus) {
      struct fuse_entry_param e;
      entry_of(cino, &e);
      used = fuse_add_direntry_plus(req, buf + pos, size - pos, name, &e, i + 1);
    } else {
      struct stat st;
      stat_of(cino, &st);
      used = fuse_add_direntry(req, buf + pos, size - pos, name, &st, i + 1);
    }
    if (used > size - pos) break;
    pos += used;
  }
  fuse_reply_buf(req, buf, pos);
  free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi) {
  (void)fi;
  readdir_common(req, ino, size, off, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi) {
  (void)fi;
  readdir_common(req, ino, size, off, 1);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  (void)ino;
  if (size == 0) fuse_reply_xattr(req, 0);
  else fuse_reply_buf(req, NULL, 0);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  (void)ino; (void)name; (void)size;
  fuse_reply_err(req, ENODATA);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MOUNTPOINT [-t THREADS]\n", argv[0]);
    return 2;
  }
  int threads = 2;
  if (argc >= 4 && !strcmp(argv[2], "-t")) threads = atoi(argv[3]);
  big = malloc(BIG_SIZE);
  if (!big) return 1;
  uint32_t x = 1;
  for (uint64_t i = 0; i < BIG_SIZE; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    big[i] = (unsigned char)x;
  }
  char *fargv[] = {"fuse_memfs", "-o", "ro,default_permissions,fsname=fuse_memfs"};
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  struct fuse_lowlevel_ops ops = {0};
  ops.lookup = op_lookup;
  ops.getattr = op_getattr;
  ops.open = op_open;
  ops.read = op_read;
  ops.readdir = op_readdir;
  ops.readdirplus = op_readdirplus;
  ops.listxattr = op_listxattr;
  ops.getxattr = op_getxattr;
  struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (!se || fuse_set_signal_handlers(se) || fuse_session_mount(se, argv[1])) return 1;
  struct fuse_loop_config *cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(cfg, 1);
  fuse_loop_cfg_set_max_threads(cfg, threads);
  int ret = fuse_session_loop_mt(se, cfg);
  fuse_loop_cfg_destroy(cfg);
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  return ret ? 1 : 0;
}
