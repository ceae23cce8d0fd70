/* deliver-local.c — local delivery agents: Maildir and mbox.
 *
 * Maildir follows the Maildir specification (cr.yp.to/proto/maildir.html):
 * write tmp/NAME, fsync, move into new/NAME (rename without replace: the
 * link-then-unlink of the specification in one step). NAME is derived from the queue id
 * and recipient index, so a delivery repeated after a crash finds its earlier
 * copy and does not duplicate it.
 *
 * mbox is the mboxrd form: a "From " separator line, every line matching
 * ^>*From  gets one more '>', a blank line after each message. The file is
 * locked with a FILE.lock dot-lock (which also keeps our own threads apart:
 * fcntl locks do not) and an fcntl write lock, and truncated back to its size
 * on any failure. A dot-lock whose process is gone is stale at once. With a
 * journal, the offset where an append starts is recorded durably before the
 * first byte is written, so that the attempt after a crash finds its complete
 * entry there (done, no duplicate) or a partial one (cut off, appended again). */
#include "config.h"
#include "deliver-local.h"
#include "dirsync.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define LOCK_TIMEOUT_SECONDS 10
#define LOCK_POLL_USEC (100 * 1000)
#define STALE_DOTLOCK_SECONDS (5 * 60)
/* A cur/ directory last changed this long before the message arrived cannot
 * hold a copy of it (allows for clock skew on network file systems). */
#define CUR_MTIME_SLACK_SECONDS (5 * 60)

/* ---- Results ---- */

/* Only errors that retrying can never cure are permanent. */
static GmDeliveryResult
result_for_errno (int e)
{
  switch (e)
    {
    case ENOTDIR:
    case EISDIR:
    case ENAMETOOLONG:
      return GM_DELIVERY_PERMFAIL;
    default:
      return GM_DELIVERY_TEMPFAIL;
    }
}

static GmDeliveryResult
fail_errno (char **detail, int e, const char *kind, const char *path)
{
  if (detail)
    *detail = g_strdup_printf ("%s %s: %s", kind, path, g_strerror (e));
  return result_for_errno (e);
}

static GmDeliveryResult
fail_locked (char **detail, const char *kind, const char *path)
{
  if (detail)
    *detail = g_strdup_printf ("%s %s: still locked after %d seconds", kind, path,
                               LOCK_TIMEOUT_SECONDS);
  return GM_DELIVERY_TEMPFAIL;
}

/* ---- File-system helpers ---- */


/* mkdir -p PATH with mode 0700. A directory it creates is made durable by an
 * fsync of its parent: a delivery reported done must survive a crash.
 * Returns 0 or an errno value (ENOTDIR when something else is in the way). */
static int
make_directories (const char *path)
{
  struct stat st;
  if (stat (path, &st) == 0)
    return S_ISDIR (st.st_mode) ? 0 : ENOTDIR;
  if (errno != ENOENT)
    return errno;
  g_autofree char *parent = g_path_get_dirname (path);
  if (strcmp (parent, path) != 0)
    {
      int e = make_directories (parent);
      if (e)
        return e;
    }
  if (mkdir (path, 0700) < 0)
    {
      if (errno != EEXIST)
        return errno;
      /* Someone else made it meanwhile. */
      return stat (path, &st) == 0 && S_ISDIR (st.st_mode) ? 0 : ENOTDIR;
    }
  return gm_fsync_directory (parent);
}


static char *
delivery_headers (const GmDeliveryInfo *info)
{
  return g_strdup_printf ("Return-Path: <%s>\nDelivered-To: %s\n",
                          info->sender ? info->sender : "", info->recipient);
}

/* ---- Maildir ---- */

/* "ARRIVAL.QUEUEID_R<index>.HOSTNAME", '/' and ':' in the host name encoded
 * as the specification asks. */
static char *
maildir_name (const GmDeliveryInfo *info)
{
  GString *name = g_string_new (NULL);
  g_string_append_printf (name, "%" G_GINT64_FORMAT ".%s_R%u.", info->arrival, info->queue_id,
                          info->rcpt_index);
  const char *host = info->hostname && *info->hostname ? info->hostname : "localhost";
  for (const char *p = host; *p; p++)
    switch (*p)
      {
      case '/': g_string_append (name, "\\057"); break;
      case ':': g_string_append (name, "\\072"); break;
      default: g_string_append_c (name, *p); break;
      }
  return g_string_free (name, FALSE);
}

/* A reader moves new/NAME to cur/NAME:2,FLAGS (some add ",S=SIZE" or use '!'). */
static gboolean
is_same_message (const char *entry, const char *name, gsize name_len)
{
  if (strncmp (entry, name, name_len) != 0)
    return FALSE;
  char next = entry[name_len];
  return next == '\0' || next == ':' || next == '!' || next == ',';
}

/* Is NAME in cur/ already? Returns 0 (with *FOUND) or an errno value. */
static int
find_in_cur (const char *cur, const char *name, gint64 arrival, gboolean *found)
{
  *found = FALSE;
  struct stat st;
  if (stat (cur, &st) < 0)
    return errno;
  /* Spares scanning big cur/ directories on every first delivery. */
  if ((gint64) st.st_mtime + CUR_MTIME_SLACK_SECONDS < arrival)
    return 0;
  DIR *d = opendir (cur);
  if (!d)
    return errno;
  gsize name_len = strlen (name);
  int e = 0;
  for (;;)
    {
      errno = 0;
      struct dirent *entry = readdir (d);
      if (!entry)
        {
          e = errno;
          break;
        }
      if (is_same_message (entry->d_name, name, name_len))
        {
          *found = TRUE;
          break;
        }
    }
  closedir (d);
  return e;
}

/* Create PATH with the contents of IOV, fsynced. Returns 0 or an errno value. */
static int
write_new_file (const char *path, struct iovec *iov, int iovcnt)
{
  /* O_TRUNC: a stale file of that name is what an interrupted attempt left. */
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return errno;
  int e = 0;
  if (!gm_write_all (fd, iov, iovcnt) || fdatasync (fd) < 0)
    e = errno;
  if (close (fd) < 0 && e == 0)
    e = errno;
  return e;
}

GmDeliveryResult
gm_deliver_maildir (const char *dir, const GmDeliveryInfo *info, const char *message, gsize len,
                    char **detail)
{
  g_return_val_if_fail (dir != NULL && info != NULL && info->recipient != NULL,
                        GM_DELIVERY_TEMPFAIL);
  g_return_val_if_fail (info->queue_id != NULL && !strchr (info->queue_id, '/'),
                        GM_DELIVERY_TEMPFAIL);
  g_return_val_if_fail (message != NULL || len == 0, GM_DELIVERY_TEMPFAIL);
  if (detail)
    *detail = NULL;

  g_autofree char *tmp_dir = g_build_filename (dir, "tmp", NULL);
  g_autofree char *new_dir = g_build_filename (dir, "new", NULL);
  g_autofree char *cur_dir = g_build_filename (dir, "cur", NULL);
  const char *const dirs[] = { dir, tmp_dir, new_dir, cur_dir };
  for (gsize i = 0; i < G_N_ELEMENTS (dirs); i++)
    {
      int e = make_directories (dirs[i]);
      if (e)
        return fail_errno (detail, e, "maildir", dirs[i]);
    }

  g_autofree char *name = maildir_name (info);
  g_autofree char *tmp_path = g_build_filename (tmp_dir, name, NULL);
  g_autofree char *new_path = g_build_filename (new_dir, name, NULL);

  /* Delivered before a crash or an unrecorded success? */
  struct stat st;
  if (lstat (new_path, &st) == 0)
    {
      gm_debug (info->queue_id, "to=<%s>, maildir=%s, status=already in new/", info->recipient, dir);
      /* A link-and-unlink rename (no RENAME_NOREPLACE) cut between the two
       * leaves the tmp/ name behind. */
      unlink (tmp_path);
      /* It may be there only because an earlier fsync of new/ failed. */
      int e = gm_fsync_directory (new_dir);
      return e ? fail_errno (detail, e, "maildir", new_dir) : GM_DELIVERY_OK;
    }
  if (errno != ENOENT)
    return fail_errno (detail, errno, "maildir", new_path);
  gboolean found;
  int e = find_in_cur (cur_dir, name, info->arrival, &found);
  if (e)
    return fail_errno (detail, e, "maildir", cur_dir);
  if (found)
    {
      gm_debug (info->queue_id, "to=<%s>, maildir=%s, status=already in cur/", info->recipient, dir);
      unlink (tmp_path);
      return GM_DELIVERY_OK;
    }

  g_autofree char *headers = delivery_headers (info);
  struct iovec iov[] = {
    { headers, strlen (headers) },
    { (void *) message, len },
  };
  e = write_new_file (tmp_path, iov, G_N_ELEMENTS (iov));
  if (e)
    {
      unlink (tmp_path);
      return fail_errno (detail, e, "maildir", tmp_path);
    }
  /* EEXIST: the same delivery got there first; the content is the same. */
  if (gm_rename_noreplace (tmp_path, new_path) < 0)
    {
      e = errno;
      unlink (tmp_path);
      if (e != EEXIST)
        return fail_errno (detail, e, "maildir", new_path);
    }
  e = gm_fsync_directory_shared (new_dir);
  if (e)
    return fail_errno (detail, e, "maildir", new_dir);
  return GM_DELIVERY_OK;
}

/* ---- mbox ---- */

/* asctime() form in UTC, with English names whatever the locale. */
static char *
asctime_utc (gint64 when)
{
  static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
  static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
  time_t t = (time_t) when;
  struct tm tm;
  if (!gmtime_r (&t, &tm))
    {
      t = 0;
      gmtime_r (&t, &tm);
    }
  return g_strdup_printf ("%s %s %2d %02d:%02d:%02d %d", days[tm.tm_wday], months[tm.tm_mon],
                          tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_year + 1900);
}

/* mboxrd: a line matching ^>*From  gets one more '>'. */
static gboolean
needs_quoting (const char *line, gsize len)
{
  gsize i = 0;
  while (i < len && line[i] == '>')
    i++;
  return len - i >= 5 && memcmp (line + i, "From ", 5) == 0;
}

/* The whole mbox entry: separator, delivery headers, quoted message, blank line. */
static GString *
format_mbox_entry (const GmDeliveryInfo *info, const char *message, gsize len)
{
  gboolean null_sender = !info->sender || !*info->sender;
  g_autofree char *date = asctime_utc (info->arrival);
  g_autofree char *headers = delivery_headers (info);
  GString *entry = g_string_sized_new (len + len / 32 + 256);
  /* The separator is split on spaces by mail readers: a quoted local part
   * with spaces ("john doe"@x) gets them replaced there (not in Return-Path:). */
  g_autofree char *sender = g_strdup (null_sender ? "MAILER-DAEMON" : info->sender);
  g_strdelimit (sender, " \t", '_');
  g_string_append_printf (entry, "From %s %s\n%s", sender, date, headers);
  for (gsize pos = 0; pos < len;)
    {
      const char *line = message + pos;
      const char *lf = memchr (line, '\n', len - pos);
      gsize line_len = lf ? (gsize) (lf - line) + 1 : len - pos;
      if (needs_quoting (line, line_len))
        g_string_append_c (entry, '>');
      g_string_append_len (entry, line, line_len);
      pos += line_len;
    }
  if (len > 0 && message[len - 1] != '\n')
    g_string_append_c (entry, '\n');
  g_string_append_c (entry, '\n');
  return entry;
}

/* An fcntl write lock on the whole file, waiting until DEADLINE. F_SETLK is
 * polled rather than F_SETLKW so that a reader holding the lock for ever
 * cannot pin a worker thread. Returns 0, ETIMEDOUT or another errno value. */
static int
fcntl_lock (int fd, gint64 deadline)
{
  struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
  while (fcntl (fd, F_SETLK, &fl) < 0)
    {
      if (errno == EINTR)
        continue;
      if (errno != EACCES && errno != EAGAIN)
        return errno;
      if (g_get_monotonic_time () >= deadline)
        return ETIMEDOUT;
      g_usleep (LOCK_POLL_USEC);
    }
  return 0;
}

/* ---- Dot-locks ----
 *
 * Our dot-lock holds "PID:HOST OFFSET\n": who holds it and, once the mbox is
 * locked and its size known, where the append starts (16 hex digits; 16
 * dashes before that). A process killed in the middle of an append leaves
 * its lock behind; whoever finds that the lock's process is gone cuts the
 * mbox back to OFFSET before removing the lock, so that the next entry never
 * lands after half a message. (The cut entry's recipient is not marked done
 * yet, since marks come after the lock is removed: it is appended again.) */

#define OFFSET_DIGITS 16

/* Dot-locks this process holds (paths), so that a lock naming our own pid can
 * be told from one left by an earlier process that had the same pid (after a
 * crash, a restarted server often gets its old pid back in a container). */
G_LOCK_DEFINE_STATIC (held_dotlocks);
static GHashTable *held_dotlocks;

typedef struct
{
  pid_t pid;                    /* 0: not known */
  gboolean other_host;
  gint64 offset;                /* where its append started, -1: not known */
} LockOwner;

/* Parse dot-lock CONTENT: "PID:HOST OFFSET" as we write it, or "PID" as
 * liblockfile does. */
static LockOwner
parse_lock (const char *content)
{
  LockOwner owner = { 0, FALSE, -1 };
  char *end;
  guint64 pid = g_ascii_strtoull (content, &end, 10);
  if (end == content || pid == 0 || pid > G_MAXINT)
    return owner;
  if (*end == ':')
    {
      const char *host = end + 1;
      gsize host_len = strcspn (host, " \n");
      const char *ours = g_get_host_name ();
      owner.other_host = strlen (ours) != host_len || strncmp (host, ours, host_len) != 0;
      const char *offset = host + host_len;
      if (*offset == ' ' && strspn (offset + 1, "0123456789ABCDEF") == OFFSET_DIGITS
          && offset[1] < '8')
        owner.offset = (gint64) g_ascii_strtoull (offset + 1, NULL, 16);
    }
  else if (*end != '\n' && *end != '\0')
    return owner;
  owner.pid = (pid_t) pid;
  return owner;
}

/* Is OWNER's process known to be gone? Only a pid of this host can be checked. */
static gboolean
lock_owner_is_gone (const char *lock_path, const LockOwner *owner)
{
  if (owner->pid == 0 || owner->other_host)
    return FALSE;
  if (owner->pid == getpid ())
    {
      G_LOCK (held_dotlocks);
      gboolean ours = held_dotlocks && g_hash_table_contains (held_dotlocks, lock_path);
      G_UNLOCK (held_dotlocks);
      return !ours;
    }
  return kill (owner->pid, 0) < 0 && errno == ESRCH;
}

/* Read the dot-lock at LOCK_PATH: its status in *ST, its content (at most
 * SIZE - 1 bytes) in CONTENT. */
static gboolean
read_lock (const char *lock_path, struct stat *st, char *content, gsize size)
{
  int fd = open (lock_path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    return FALSE;
  gboolean ok = fstat (fd, st) == 0;
  ssize_t n = ok ? read (fd, content, size - 1) : -1;
  content[n > 0 ? n : 0] = '\0';
  close (fd);
  return ok;
}

/* Is LOCK_PATH still the lock file that ST and CONTENT describe? The inode
 * alone does not tell: a file system reuses the number of a removed file at
 * once, and a fresh lock would get it. */
static gboolean
same_lock (const char *lock_path, const struct stat *st, const char *content)
{
  struct stat now;
  char now_content[256];
  return read_lock (lock_path, &now, now_content, sizeof now_content)
    && now.st_dev == st->st_dev && now.st_ino == st->st_ino && strcmp (now_content, content) == 0;
}

/* The process holding LOCK_PATH (described by ST) died while appending to
 * FILE from OFFSET: cut FILE back to OFFSET. Returns FALSE when FILE stays
 * locked past DEADLINE or cannot be cut (the lock must then stay). */
static gboolean
cut_interrupted_append (const char *file, const char *lock_path, const struct stat *st,
                        const char *content, const LockOwner *owner, gint64 deadline)
{
  int fd = open (file, O_RDWR | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT;
  gboolean ok = FALSE;
  struct stat mbox;
  /* Under the fcntl lock, and only while the dead process's lock is still
   * there: another process may have repaired it and appended since. */
  if (fcntl_lock (fd, deadline) == 0 && fstat (fd, &mbox) == 0)
    {
      ok = TRUE;
      if (same_lock (lock_path, st, content) && S_ISREG (mbox.st_mode)
          && mbox.st_size > owner->offset)
        {
          ok = ftruncate (fd, owner->offset) == 0 && fdatasync (fd) == 0;
          gm_log (NULL, "mbox=%s, status=%s, offset=%" G_GINT64_FORMAT ", length=%" G_GINT64_FORMAT
                  ", reason=the process appending it (pid %d) is gone%s%s", file,
                  ok ? "interrupted append removed" : "not repaired", owner->offset,
                  (gint64) mbox.st_size - owner->offset, (int) owner->pid, ok ? "" : ": ",
                  ok ? "" : g_strerror (errno));
        }
    }
  close (fd);
  return ok;
}

/* Returns TRUE when LOCK_PATH (the dot-lock of FILE) was stale and is gone
 * (or vanished by itself): its process is gone (then an append it left
 * unfinished is cut off first), or it is older than STALE_DOTLOCK_SECONDS (a
 * lock of another host, or one whose pid cannot be read). */
static gboolean
remove_if_stale (const char *file, const char *lock_path, gint64 deadline)
{
  struct stat st;
  char content[256];
  if (!read_lock (lock_path, &st, content, sizeof content))
    return errno == ENOENT;
  LockOwner owner = parse_lock (content);
  const char *reason = NULL;
  if (lock_owner_is_gone (lock_path, &owner))
    {
      reason = "its process is gone";
      if (owner.offset >= 0
          && !cut_interrupted_append (file, lock_path, &st, content, &owner, deadline))
        return FALSE;
    }
  else if ((gint64) time (NULL) - (gint64) st.st_mtime >= STALE_DOTLOCK_SECONDS)
    reason = "older than the stale limit";
  if (!reason)
    return FALSE;
  /* Still the file we judged, not a fresh lock that replaced it? */
  G_LOCK (held_dotlocks);
  gboolean removed = same_lock (lock_path, &st, content) && (unlink (lock_path) == 0 || errno == ENOENT);
  G_UNLOCK (held_dotlocks);
  if (!removed)
    return !g_file_test (lock_path, G_FILE_TEST_EXISTS);
  g_autofree char *shown = g_strescape (g_strchomp (content), NULL);
  gm_log (NULL, "mbox-lock=%s, status=removed, owner=%s, reason=%s (%d seconds)", lock_path, shown,
          reason, (int) ((gint64) time (NULL) - (gint64) st.st_mtime));
  return TRUE;
}

/* Threads of this process judge and remove stale dot-locks one at a time:
 * fcntl locks, which keep other processes out of a repair, do not keep our
 * own threads apart. */
static gboolean
remove_if_stale_serialized (const char *file, const char *lock_path, gint64 deadline)
{
  static GMutex stale_mutex;
  g_mutex_lock (&stale_mutex);
  gboolean removed = remove_if_stale (file, lock_path, deadline);
  g_mutex_unlock (&stale_mutex);
  return removed;
}

/* Create LOCK_PATH holding OWNER, failing with EEXIST when it exists.
 * Returns the open lock file (for dotlock_note_offset) or -errno. The lock
 * is made whole in an unnamed file (O_TMPFILE) and linked into place, so that
 * a crash never leaves an empty lock, which only its age could show to be
 * stale; where the file system cannot do that, it is created, then written. */
static int
create_dotlock (const char *lock_path, const char *owner)
{
#ifdef O_TMPFILE
  g_autofree char *dir = g_path_get_dirname (lock_path);
  int fd = open (dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
  if (fd >= 0)
    {
      struct iovec iov = { (void *) owner, strlen (owner) };
      int r = gm_write_all (fd, &iov, 1) ? 0 : -1;
      if (r == 0)
        {
          /* AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc does not. */
          r = linkat (fd, "", AT_FDCWD, lock_path, AT_EMPTY_PATH);
          if (r < 0 && errno != EEXIST)
            {
              char proc[64];
              g_snprintf (proc, sizeof proc, "/proc/self/fd/%d", fd);
              r = linkat (AT_FDCWD, proc, AT_FDCWD, lock_path, AT_SYMLINK_FOLLOW);
            }
        }
      int e = errno;
      if (r == 0)
        return fd;
      close (fd);
      if (e == EEXIST)
        return -EEXIST;
      /* Anything else: try the plain way, which reports real errors. */
    }
#endif
  int lock_fd = open (lock_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (lock_fd < 0)
    return -errno;
  /* Lost content only means the lock is judged by its age. */
  ssize_t ignored = write (lock_fd, owner, strlen (owner));
  (void) ignored;
  return lock_fd;
}

typedef struct
{
  char *path;
  int fd;
  gsize offset_at;              /* of the OFFSET field in the file */
} DotLock;

/* Create FILE's dot-lock exclusively, waiting until DEADLINE (monotonic
 * time). Returns 0, ETIMEDOUT or another errno value. */
static int
dotlock_acquire (const char *file, DotLock *lock, gint64 deadline)
{
  lock->path = g_strconcat (file, ".lock", NULL);
  g_autofree char *who = g_strdup_printf ("%d:%s ", (int) getpid (), g_get_host_name ());
  g_autofree char *content = g_strconcat (who, "----------------\n", NULL);
  lock->offset_at = strlen (who);
  for (;;)
    {
      G_LOCK (held_dotlocks);
      int fd = create_dotlock (lock->path, content);
      if (fd >= 0)
        {
          if (!held_dotlocks)
            held_dotlocks = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
          g_hash_table_add (held_dotlocks, g_strdup (lock->path));
        }
      G_UNLOCK (held_dotlocks);
      if (fd >= 0)
        {
          lock->fd = fd;
          return 0;
        }
      if (fd != -EEXIST)
        return -fd;
      if (remove_if_stale_serialized (file, lock->path, deadline))
        continue;
      if (g_get_monotonic_time () >= deadline)
        return ETIMEDOUT;
      g_usleep (LOCK_POLL_USEC);
    }
}

/* Write into our dot-lock where the append starts (see above). In place and
 * within one page, so that no crash leaves half of it. */
static void
dotlock_note_offset (const DotLock *lock, gint64 offset)
{
  char digits[OFFSET_DIGITS + 1];
  g_snprintf (digits, sizeof digits, "%0" G_STRINGIFY (OFFSET_DIGITS) G_GINT64_MODIFIER "X",
              (guint64) offset);
  if (pwrite (lock->fd, digits, OFFSET_DIGITS, lock->offset_at) != OFFSET_DIGITS)
    gm_log (NULL, "mbox-lock=%s, status=offset not written, reason=%s", lock->path,
            g_strerror (errno));
}

/* Remove our dot-lock. */
static void
dotlock_release (DotLock *lock)
{
  G_LOCK (held_dotlocks);
  if (unlink (lock->path) < 0)
    gm_log (NULL, "mbox-lock=%s, status=not removed, reason=%s", lock->path, g_strerror (errno));
  g_hash_table_remove (held_dotlocks, lock->path);
  G_UNLOCK (held_dotlocks);
  close (lock->fd);
  g_clear_pointer (&lock->path, g_free);
}

/* Open FILE for appending (and reading back an interrupted append), creating
 * it when missing; *CREATED tells which. O_NONBLOCK: opening a FIFO put in the
 * mailbox's place must not hang. */
static int
open_mbox (const char *file, gboolean *created)
{
  const int flags = O_RDWR | O_APPEND | O_NONBLOCK | O_CLOEXEC;
  for (int attempt = 0; attempt < 3; attempt++)
    {
      *created = FALSE;
      int fd = open (file, flags);
      if (fd >= 0 || errno != ENOENT)
        return fd;
      fd = open (file, flags | O_CREAT | O_EXCL, 0600);
      if (fd >= 0 || errno != EEXIST)
        {
          *created = fd >= 0;
          return fd;
        }
    }
  return -1;
}

typedef enum
{
  RESUME_NOTHING,               /* nothing of ours at the recorded offset: append */
  RESUME_PARTIAL,               /* the file ends with part of our entry: cut it, append */
  RESUME_DONE,                  /* our whole entry is there: delivered */
  RESUME_DAMAGED,               /* part of our entry, then other mail: cannot be cut */
} ResumeState;

/* An earlier attempt recorded that it would append ENTRY (of the message
 * QUEUE_ID) at byte START of the mbox open on FD, which now has SIZE bytes:
 * what did it leave there? Reads at most ENTRY's length. Returns 0 or an
 * errno value. */
static int
find_earlier_append (int fd, const GString *entry, const char *queue_id, gint64 start,
                     gint64 size, ResumeState *state)
{
  *state = RESUME_NOTHING;
  /* Other mail may begin like ours (same sender): only bytes up to the queue
   * id in the Received: header tell that a prefix is ours. */
  const char *id = queue_id ? strstr (entry->str, queue_id) : NULL;
  gint64 identified = id ? (gint64) (id - entry->str + strlen (queue_id)) : (gint64) entry->len;
  if (start < 0 || start >= size)
    return 0;
  gint64 there = MIN ((gint64) entry->len, size - start);
  g_autofree char *buf = g_malloc (MIN (there, 64 * 1024));
  for (gint64 done = 0; done < there;)
    {
      gsize want = MIN (there - done, 64 * 1024);
      ssize_t n = pread (fd, buf, want, start + done);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        return errno;
      if (n == 0)
        return EIO;             /* shrank under our lock: not ours to judge */
      for (ssize_t i = 0; i < n; i++)
        if (buf[i] != entry->str[done + i])
          {
            if (done + i >= identified)
              *state = RESUME_DAMAGED;
            return 0;
          }
      done += n;
    }
  if (there == (gint64) entry->len)
    *state = RESUME_DONE;
  else if (start + there == size)
    *state = RESUME_PARTIAL;
  return 0;
}

/* Append ENTRY to FILE; the caller holds the dot-lock. */
static GmDeliveryResult
append_locked (const char *file, const DotLock *lock, const GmDeliveryInfo *info,
               const GString *entry, gint64 deadline, char **detail)
{
  gboolean created;
  int fd = open_mbox (file, &created);
  if (fd < 0)
    return fail_errno (detail, errno, "mbox", file);
  int e = fcntl_lock (fd, deadline);
  if (e)
    {
      close (fd);
      return e == ETIMEDOUT ? fail_locked (detail, "mbox", file)
                            : fail_errno (detail, e, "mbox", file);
    }
  struct stat st;
  if (fstat (fd, &st) < 0)
    {
      e = errno;
      close (fd);
      return fail_errno (detail, e, "mbox", file);
    }
  if (!S_ISREG (st.st_mode))
    {
      close (fd);
      if (detail)
        *detail = g_strdup_printf ("mbox %s: not a regular file", file);
      return GM_DELIVERY_PERMFAIL;
    }

  off_t original_size = st.st_size;
  const GmMboxJournal *journal = info->journal;
  if (journal && journal->previous >= 0)
    {
      /* An earlier attempt began appending at journal->previous and may have
       * been cut short by a crash anywhere after that. */
      ResumeState state;
      e = find_earlier_append (fd, entry, info->queue_id, journal->previous, original_size,
                               &state);
      if (e)
        {
          close (fd);
          return fail_errno (detail, e, "mbox", file);
        }
      if (state == RESUME_DONE)
        {
          gm_log (info->queue_id, "to=<%s>, mbox=%s, status=already appended, offset=%" G_GINT64_FORMAT,
                  info->recipient, file, journal->previous);
          /* It may be there only because the crash came before its fdatasync. */
          e = fdatasync (fd) < 0 ? errno : 0;
          close (fd);
          return e ? fail_errno (detail, e, "mbox", file) : GM_DELIVERY_OK;
        }
      if (state == RESUME_PARTIAL)
        {
          if (ftruncate (fd, journal->previous) < 0 || fdatasync (fd) < 0)
            {
              e = errno;
              close (fd);
              return fail_errno (detail, e, "mbox", file);
            }
          gm_log (info->queue_id, "to=<%s>, mbox=%s, status=partial entry removed, offset=%"
                  G_GINT64_FORMAT ", length=%" G_GINT64_FORMAT, info->recipient, file,
                  journal->previous, (gint64) (original_size - journal->previous));
          original_size = journal->previous;
        }
      if (state == RESUME_DAMAGED)
        gm_log (info->queue_id, "to=<%s>, mbox=%s, status=damaged, reason=an interrupted delivery "
                "left part of this message at byte %" G_GINT64_FORMAT " and other mail follows; "
                "appending it whole", info->recipient, file, journal->previous);
    }
  /* Where this append starts, durably, before its first byte. Even when the
   * same offset is there already: an earlier attempt may have written it and
   * failed to sync it. */
  if (journal && journal->record && !journal->record (journal->data, original_size, detail))
    {
      close (fd);
      return GM_DELIVERY_TEMPFAIL;
    }

  dotlock_note_offset (lock, original_size);
  struct iovec iov = { entry->str, entry->len };
  if (!gm_write_all (fd, &iov, 1) || fdatasync (fd) < 0)
    e = errno;
  if (e == 0 && created)
    {
      g_autofree char *parent = g_path_get_dirname (file);
      e = gm_fsync_directory (parent);
    }
  if (e)
    {
      /* Leave no partial message: readers would take it for mail. */
      if (ftruncate (fd, original_size) < 0 || fdatasync (fd) < 0)
        gm_log (NULL, "mbox=%s, status=damaged, reason=could not truncate back to %lld bytes: %s",
                file, (long long) original_size, g_strerror (errno));
      close (fd);
      return fail_errno (detail, e, "mbox", file);
    }
  close (fd);
  return GM_DELIVERY_OK;
}

GmDeliveryResult
gm_deliver_mbox (const char *file, const GmDeliveryInfo *info, const char *message, gsize len,
                 char **detail)
{
  g_return_val_if_fail (file != NULL && info != NULL && info->recipient != NULL,
                        GM_DELIVERY_TEMPFAIL);
  g_return_val_if_fail (message != NULL || len == 0, GM_DELIVERY_TEMPFAIL);
  if (detail)
    *detail = NULL;

  g_autofree char *parent = g_path_get_dirname (file);
  int e = make_directories (parent);
  if (e)
    return fail_errno (detail, e, "mbox", parent);

  g_autoptr (GString) entry = format_mbox_entry (info, message, len);
  gint64 deadline = g_get_monotonic_time () + LOCK_TIMEOUT_SECONDS * G_USEC_PER_SEC;
  DotLock lock = { NULL, -1, 0 };
  e = dotlock_acquire (file, &lock, deadline);
  if (e)
    {
      GmDeliveryResult failed = e == ETIMEDOUT ? fail_locked (detail, "mbox", lock.path)
                                               : fail_errno (detail, e, "mbox", lock.path);
      g_free (lock.path);
      return failed;
    }
  GmDeliveryResult result = append_locked (file, &lock, info, entry, deadline, detail);
  dotlock_release (&lock);
  return result;
}
