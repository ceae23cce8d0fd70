/* faults.c — an LD_PRELOAD library that makes file-system calls fail, or go
 * slowly, on demand: for the disk-full tests (tests/integration/
 * test_disk_full.py) and the crash torture (tests/torture/torture.py).
 *
 * GUILLEMOT_FAULTS names a control file. While it exists, each of its lines
 * is a rule:
 *
 *     OPERATION PATH-SUBSTRING [ERRNO]
 *         OPERATION fails with ERRNO (default ENOSPC; also EDQUOT, EIO,
 *         EFBIG) on every path containing PATH-SUBSTRING (ending with it,
 *         without its '$', when it ends with '$'). Operations: write (write,
 *         writev, pwrite, pwritev), fsync (fsync, fdatasync), rename (rename,
 *         renameat, renameat2: the path is the destination), link (link,
 *         linkat: destination), create (open and openat with O_CREAT or
 *         O_TMPFILE: the path opened), mkdir, truncate (ftruncate).
 *     chunk PATH-SUBSTRING BYTES MICROSECONDS
 *         writes to matching paths go BYTES at a time with a pause between
 *         pieces (the caller still sees one whole write), so that a SIGKILL
 *         can land in the middle of one, as it can in the kernel's copy of a
 *         large write.
 *     delay OPERATION PATH-SUBSTRING MICROSECONDS
 *         a pause before OPERATION on matching paths.
 *
 * A descriptor's path is what /proc/self/fd/N says. Lines starting with '#'
 * are comments. The file is read again whenever it changes; without it every
 * call goes straight through. Each injected failure is appended to the
 * control file's name plus ".log" as "OPERATION PATH ERRNO-NAME", so that a
 * test can tell that (and where) it hit.
 *
 * Faulting calls the way a full disk does, at the exact step a test wants,
 * works without root and on any file system; the tmpfs tests complement it
 * with the real thing where mounting is allowed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_RULES 32
#define MAX_TEXT 512

typedef enum { RULE_FAIL, RULE_CHUNK, RULE_DELAY } RuleKind;

typedef struct
{
  RuleKind kind;
  char op[16];                  /* the operation (write for chunk) */
  char substring[MAX_TEXT];
  int err;                      /* RULE_FAIL */
  long bytes;                   /* RULE_CHUNK */
  long usec;                    /* RULE_CHUNK, RULE_DELAY */
} Rule;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static Rule rules[MAX_RULES];
static int n_rules;
static struct stat loaded;      /* of the control file when last read */
static int have_loaded;

static ssize_t (*real_write) (int, const void *, size_t);
static ssize_t (*real_writev) (int, const struct iovec *, int);
static ssize_t (*real_pwrite) (int, const void *, size_t, off_t);
static ssize_t (*real_pwritev) (int, const struct iovec *, int, off_t);
static int (*real_fsync) (int);
static int (*real_fdatasync) (int);
static int (*real_rename) (const char *, const char *);
static int (*real_renameat) (int, const char *, int, const char *);
static int (*real_renameat2) (int, const char *, int, const char *, unsigned int);
static int (*real_link) (const char *, const char *);
static int (*real_linkat) (int, const char *, int, const char *, int);
static int (*real_open) (const char *, int, ...);
static int (*real_openat) (int, const char *, int, ...);
static int (*real_mkdir) (const char *, mode_t);
static int (*real_ftruncate) (int, off_t);

static pthread_once_t resolved = PTHREAD_ONCE_INIT;

static void
resolve_all (void)
{
#define RESOLVE(name) (real_##name = dlsym (RTLD_NEXT, #name))
  RESOLVE (write); RESOLVE (writev); RESOLVE (pwrite); RESOLVE (pwritev);
  RESOLVE (fsync); RESOLVE (fdatasync); RESOLVE (rename); RESOLVE (renameat);
  RESOLVE (renameat2); RESOLVE (link); RESOLVE (linkat); RESOLVE (open);
  RESOLVE (openat); RESOLVE (mkdir); RESOLVE (ftruncate);
#undef RESOLVE
}

__attribute__ ((constructor)) static void
init (void)
{
  pthread_once (&resolved, resolve_all);
}

/* The next definition of NAME (libc's); resolved on first use too, in case a
 * constructor that runs before ours calls it. */
#define REAL(name) (pthread_once (&resolved, resolve_all), real_##name)

static int
errno_from_name (const char *name)
{
  static const struct { const char *name; int value; } names[] = {
    { "ENOSPC", ENOSPC }, { "EDQUOT", EDQUOT }, { "EIO", EIO }, { "EFBIG", EFBIG },
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp (names[i].name, name) == 0)
      return names[i].value;
  return ENOSPC;
}

static const char *
errno_name (int e)
{
  switch (e)
    {
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EIO: return "EIO";
    case EFBIG: return "EFBIG";
    default: return "?";
    }
}

/* Read the control file again if it changed; the caller holds LOCK. */
static void
reload (const char *control)
{
  struct stat st;
  if (stat (control, &st) < 0)
    {
      n_rules = 0;
      have_loaded = 0;
      return;
    }
  if (have_loaded && st.st_ino == loaded.st_ino && st.st_size == loaded.st_size
      && st.st_mtim.tv_sec == loaded.st_mtim.tv_sec && st.st_mtim.tv_nsec == loaded.st_mtim.tv_nsec)
    return;
  n_rules = 0;
  FILE *f = fopen (control, "re");
  if (!f)
    return;
  char line[MAX_TEXT + 64];
  while (n_rules < MAX_RULES && fgets (line, sizeof line, f))
    {
      char a[16], b[MAX_TEXT], c[MAX_TEXT], d[32];
      int n = line[0] == '#' ? 0 : sscanf (line, "%15s %511s %511s %31s", a, b, c, d);
      Rule *r = &rules[n_rules];
      memset (r, 0, sizeof *r);
      if (n >= 4 && strcmp (a, "chunk") == 0)
        {
          r->kind = RULE_CHUNK;
          snprintf (r->op, sizeof r->op, "write");
          snprintf (r->substring, sizeof r->substring, "%s", b);
          r->bytes = atol (c) > 0 ? atol (c) : 4096;
          r->usec = atol (d);
        }
      else if (n >= 4 && strcmp (a, "delay") == 0)
        {
          r->kind = RULE_DELAY;
          snprintf (r->op, sizeof r->op, "%.15s", b);
          snprintf (r->substring, sizeof r->substring, "%s", c);
          r->usec = atol (d);
        }
      else if (n >= 2)
        {
          r->kind = RULE_FAIL;
          snprintf (r->op, sizeof r->op, "%s", a);
          snprintf (r->substring, sizeof r->substring, "%s", b);
          r->err = errno_from_name (n >= 3 ? c : "ENOSPC");
        }
      else
        continue;
      n_rules++;
    }
  fclose (f);
  loaded = st;
  have_loaded = 1;
}

static void
note (const char *control, const char *op, const char *path, int err)
{
  char log_path[MAX_TEXT + 8], line[MAX_TEXT * 2];
  snprintf (log_path, sizeof log_path, "%s.log", control);
  int fd = REAL (open) (log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0)
    return;
  int n = snprintf (line, sizeof line, "%s %s %s\n", op, path, errno_name (err));
  if (n > 0)
    REAL (write) (fd, line, (size_t) n < sizeof line ? (size_t) n : sizeof line - 1);
  close (fd);
}

/* Does PATH contain PATTERN, or end with it when PATTERN ends with '$'? */
static int
matches (const char *path, const char *pattern)
{
  size_t n = strlen (pattern);
  if (n > 0 && pattern[n - 1] == '$')
    {
      size_t len = strlen (path);
      return len >= n - 1 && strncmp (path + len - (n - 1), pattern, n - 1) == 0;
    }
  return strstr (path, pattern) != NULL;
}

/* What the rules say about OP on PATH: the errno value to fail with (or 0),
 * after sleeping as delay rules ask; *CHUNK (if not NULL) gets the piece
 * size and pause of a chunk rule, or 0. */
static int
consult (const char *op, const char *path, long *chunk_bytes, long *chunk_usec)
{
  if (chunk_bytes)
    *chunk_bytes = *chunk_usec = 0;
  const char *control = getenv ("GUILLEMOT_FAULTS");
  if (!control || !path)
    return 0;
  int saved = errno;
  int err = 0;
  long delay = 0;
  pthread_mutex_lock (&lock);
  reload (control);
  for (int i = 0; i < n_rules; i++)
    {
      Rule *r = &rules[i];
      if (strcmp (r->op, op) != 0 || !matches (path, r->substring))
        continue;
      if (r->kind == RULE_FAIL && !err)
        err = r->err;
      else if (r->kind == RULE_DELAY)
        delay += r->usec;
      else if (r->kind == RULE_CHUNK && chunk_bytes && !*chunk_bytes)
        {
          *chunk_bytes = r->bytes;
          *chunk_usec = r->usec;
        }
    }
  pthread_mutex_unlock (&lock);
  if (err)
    note (control, op, path, err);
  else if (delay > 0)
    usleep (delay);
  errno = saved;
  return err;
}

static int
fault (const char *op, const char *path)
{
  return consult (op, path, NULL, NULL);
}

/* The path open on FD, in BUF; NULL when there is nothing to consult. */
static const char *
fd_path (int fd, char *buf, size_t size)
{
  if (!getenv ("GUILLEMOT_FAULTS"))
    return NULL;
  char link[64];
  snprintf (link, sizeof link, "/proc/self/fd/%d", fd);
  int saved = errno;
  ssize_t n = readlink (link, buf, size - 1);
  errno = saved;
  if (n <= 0)
    return NULL;
  buf[n] = '\0';
  return buf;
}

static int
fault_fd (const char *op, int fd)
{
  char path[MAX_TEXT];
  return fault (op, fd_path (fd, path, sizeof path));
}

/* Write IOV to FD (at OFFSET, or at the file position when OFFSET < 0) in
 * pieces of at most BYTES with USEC between them. Returns what write would. */
static ssize_t
write_in_pieces (int fd, const struct iovec *iov, int iovcnt, off_t offset, long bytes, long usec)
{
  ssize_t total = 0;
  for (int i = 0; i < iovcnt; i++)
    for (size_t done = 0; done < iov[i].iov_len;)
      {
        size_t want = iov[i].iov_len - done;
        if (want > (size_t) bytes)
          want = bytes;
        if (total > 0)
          usleep (usec);
        const char *from = (const char *) iov[i].iov_base + done;
        ssize_t n = offset < 0 ? REAL (write) (fd, from, want)
                               : REAL (pwrite) (fd, from, want, offset + total);
        if (n < 0)
          return total > 0 ? total : -1;
        total += n;
        done += n;
        if ((size_t) n < want)
          return total;
      }
  return total;
}

/* write, writev, pwrite, pwritev: fail, or go in pieces, as the rules say.
 * Returns 1 with *RESULT set when the rules did the call, 0 to go ahead. */
static int
write_rules (int fd, const struct iovec *iov, int iovcnt, off_t offset, ssize_t *result)
{
  char path[MAX_TEXT];
  long bytes, usec;
  int err = consult ("write", fd_path (fd, path, sizeof path), &bytes, &usec);
  if (err)
    {
      errno = err;
      *result = -1;
      return 1;
    }
  if (bytes > 0)
    {
      *result = write_in_pieces (fd, iov, iovcnt, offset, bytes, usec);
      return 1;
    }
  return 0;
}

/* The path DIRFD/PATH names, for matching: only absolute paths and AT_FDCWD
 * relative ones are resolved (Guillemot uses absolute paths). */
static const char *
at_path (int dirfd, const char *path, char *buf, size_t size)
{
  if (!path || path[0] == '/' || dirfd == AT_FDCWD)
    return path;
  char link[64], dir[MAX_TEXT];
  snprintf (link, sizeof link, "/proc/self/fd/%d", dirfd);
  ssize_t n = readlink (link, dir, sizeof dir - 1);
  if (n <= 0)
    return path;
  dir[n] = '\0';
  snprintf (buf, size, "%s/%s", dir, path);
  return buf;
}

#define FAIL_IF(expr) do { int fault_err = (expr); \
                           if (fault_err) { errno = fault_err; return -1; } } while (0)

ssize_t
write (int fd, const void *buf, size_t count)
{
  struct iovec iov = { (void *) buf, count };
  ssize_t result;
  if (write_rules (fd, &iov, 1, -1, &result))
    return result;
  return REAL (write) (fd, buf, count);
}

ssize_t
writev (int fd, const struct iovec *iov, int iovcnt)
{
  ssize_t result;
  if (write_rules (fd, iov, iovcnt, -1, &result))
    return result;
  return REAL (writev) (fd, iov, iovcnt);
}

ssize_t
pwrite (int fd, const void *buf, size_t count, off_t offset)
{
  struct iovec iov = { (void *) buf, count };
  ssize_t result;
  if (write_rules (fd, &iov, 1, offset, &result))
    return result;
  return REAL (pwrite) (fd, buf, count, offset);
}
ssize_t pwrite64 (int fd, const void *buf, size_t count, off_t offset) __attribute__ ((alias ("pwrite")));

ssize_t
pwritev (int fd, const struct iovec *iov, int iovcnt, off_t offset)
{
  ssize_t result;
  if (write_rules (fd, iov, iovcnt, offset, &result))
    return result;
  return REAL (pwritev) (fd, iov, iovcnt, offset);
}
ssize_t pwritev64 (int fd, const struct iovec *iov, int iovcnt, off_t offset) __attribute__ ((alias ("pwritev")));

int
fsync (int fd)
{
  FAIL_IF (fault_fd ("fsync", fd));
  return REAL (fsync) (fd);
}

int
fdatasync (int fd)
{
  FAIL_IF (fault_fd ("fsync", fd));
  return REAL (fdatasync) (fd);
}

int
ftruncate (int fd, off_t length)
{
  FAIL_IF (fault_fd ("truncate", fd));
  return REAL (ftruncate) (fd, length);
}
int ftruncate64 (int fd, off_t length) __attribute__ ((alias ("ftruncate")));

int
rename (const char *from, const char *to)
{
  FAIL_IF (fault ("rename", to));
  return REAL (rename) (from, to);
}

int
renameat (int fromfd, const char *from, int tofd, const char *to)
{
  char buf[MAX_TEXT * 2];
  FAIL_IF (fault ("rename", at_path (tofd, to, buf, sizeof buf)));
  return REAL (renameat) (fromfd, from, tofd, to);
}

int
renameat2 (int fromfd, const char *from, int tofd, const char *to, unsigned int flags)
{
  char buf[MAX_TEXT * 2];
  FAIL_IF (fault ("rename", at_path (tofd, to, buf, sizeof buf)));
  return REAL (renameat2) (fromfd, from, tofd, to, flags);
}

int
link (const char *from, const char *to)
{
  FAIL_IF (fault ("link", to));
  return REAL (link) (from, to);
}

int
linkat (int fromfd, const char *from, int tofd, const char *to, int flags)
{
  char buf[MAX_TEXT * 2];
  FAIL_IF (fault ("link", at_path (tofd, to, buf, sizeof buf)));
  return REAL (linkat) (fromfd, from, tofd, to, flags);
}

int
mkdir (const char *path, mode_t mode)
{
  FAIL_IF (fault ("mkdir", path));
  return REAL (mkdir) (path, mode);
}

static int
creates (int flags)
{
  return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE;
}

int
open (const char *path, int flags, ...)
{
  mode_t mode = 0;
  if (creates (flags))
    {
      va_list ap;
      va_start (ap, flags);
      mode = va_arg (ap, mode_t);
      va_end (ap);
      FAIL_IF (fault ("create", path));
    }
  return REAL (open) (path, flags, mode);
}
int open64 (const char *path, int flags, ...) __attribute__ ((alias ("open")));

int
openat (int dirfd, const char *path, int flags, ...)
{
  mode_t mode = 0;
  if (creates (flags))
    {
      va_list ap;
      va_start (ap, flags);
      mode = va_arg (ap, mode_t);
      va_end (ap);
      char buf[MAX_TEXT * 2];
      FAIL_IF (fault ("create", at_path (dirfd, path, buf, sizeof buf)));
    }
  return REAL (openat) (dirfd, path, flags, mode);
}
int openat64 (int dirfd, const char *path, int flags, ...) __attribute__ ((alias ("openat")));
