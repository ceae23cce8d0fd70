/* dirsync.c — durable files: whole writes, safe renames, shared directory fsyncs.
 *
 * After a rename or link into a directory, the new entry is durable only once
 * the directory itself is fsynced. Many threads doing that at once for the
 * same directory (spool writers, deliveries into one Maildir) share the
 * fsyncs instead of queueing one each. */
#include "config.h"
#include "dirsync.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int
gm_fsync_directory (const char *path)
{
  int fd = open (path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return errno;
  int e = 0;
  if (fsync (fd) < 0 && errno != EINVAL)
    e = errno;
  close (fd);
  return e;
}

/* Group commit.
 *
 * Each writer takes a ticket after its rename. A directory fsync that starts
 * when tickets 1..N have been handed out makes all of them durable, so a writer
 * whose ticket is covered by a round that started after it waits instead of
 * running its own fsync. One round runs at a time; the next starts as soon as
 * it ends, covering everyone who arrived meanwhile. */

typedef struct
{
  GMutex lock;
  GCond done;
  guint64 tickets;              /* handed out: one per rename into the directory */
  guint64 synced;               /* every ticket up to this one is durable */
  guint64 failed;               /* every ticket up to this one met a failed fsync */
  int failed_errno;
  gboolean syncing;
} DirSync;

G_LOCK_DEFINE_STATIC (dir_syncs);
static GHashTable *dir_syncs;   /* path → DirSync*, kept for the process: one per spool or mailbox */

static DirSync *
dir_sync_for (const char *dir)
{
  G_LOCK (dir_syncs);
  if (!dir_syncs)
    dir_syncs = g_hash_table_new (g_str_hash, g_str_equal);
  DirSync *ds = g_hash_table_lookup (dir_syncs, dir);
  if (!ds)
    {
      ds = g_new0 (DirSync, 1);
      g_mutex_init (&ds->lock);
      g_cond_init (&ds->done);
      g_hash_table_insert (dir_syncs, g_strdup (dir), ds);
    }
  G_UNLOCK (dir_syncs);
  return ds;
}

int
gm_fsync_directory_shared (const char *dir)
{
  DirSync *ds = dir_sync_for (dir);
  int e = 0;
  g_mutex_lock (&ds->lock);
  guint64 ticket = ++ds->tickets;
  while (ds->synced < ticket)
    {
      if (ds->failed >= ticket)
        {
          e = ds->failed_errno;
          break;
        }
      if (ds->syncing)
        {
          g_cond_wait (&ds->done, &ds->lock);
          continue;
        }
      guint64 covered = ds->tickets;
      ds->syncing = TRUE;
      g_mutex_unlock (&ds->lock);
      int round_errno = gm_fsync_directory (dir);
      g_mutex_lock (&ds->lock);
      ds->syncing = FALSE;
      if (round_errno == 0)
        ds->synced = MAX (ds->synced, covered);
      else
        {
          ds->failed = MAX (ds->failed, covered);
          ds->failed_errno = round_errno;
        }
      g_cond_broadcast (&ds->done);
    }
  g_mutex_unlock (&ds->lock);
  return e;
}

gboolean
gm_write_all (int fd, struct iovec *iov, int iovcnt)
{
  for (;;)
    {
      while (iovcnt > 0 && iov->iov_len == 0)
        iov++, iovcnt--;
      if (iovcnt == 0)
        return TRUE;
      ssize_t n = writev (fd, iov, iovcnt);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        {
          if (n == 0)
            errno = EIO;
          return FALSE;
        }
      while (iovcnt > 0 && (size_t) n >= iov->iov_len)
        {
          n -= iov->iov_len;
          iov++, iovcnt--;
        }
      if (iovcnt > 0)
        {
          iov->iov_base = (char *) iov->iov_base + n;
          iov->iov_len -= n;
        }
    }
}

int
gm_rename_noreplace (const char *from, const char *to)
{
#ifdef RENAME_NOREPLACE
  if (renameat2 (AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
    return 0;
  if (errno != EINVAL && errno != ENOSYS)
    return -1;
#endif
  if (link (from, to) < 0)
    return -1;
  unlink (from);
  return 0;
}
