/* dirsync.h — durable files: whole writes, directory fsyncs shared between threads. */
#pragma once
#include <glib.h>
#include <sys/uio.h>

/* fsync the directory PATH. Returns 0 or an errno value (EINVAL, a file
 * system that cannot sync directories, counts as success). */
int gm_fsync_directory (const char *path);

/* Make an entry the caller has just created or renamed in DIR durable.
 * Concurrent callers share directory fsyncs (group commit): a caller whose
 * entry is covered by an fsync that started after it waits for that one.
 * Thread-safe. Returns 0 or an errno value. */
int gm_fsync_directory_shared (const char *dir);

/* Write every byte of IOV to FD, resuming after partial writes and EINTR.
 * FALSE with errno set on failure. */
gboolean gm_write_all (int fd, struct iovec *iov, int iovcnt);

/* rename(2) that never replaces TO (fails with EEXIST instead): renameat2's
 * RENAME_NOREPLACE, or link and unlink where the file system lacks it.
 * Returns 0 or -1 with errno set. */
int gm_rename_noreplace (const char *from, const char *to);
