/* dirsync.h — durable directory entries, with fsyncs shared between threads. */
#pragma once
#include <glib.h>

/* fsync the directory PATH. Returns 0 or an errno value (EINVAL, a file
 * system that cannot sync directories, counts as success). */
int gm_fsync_directory (const char *path);

/* Make an entry the caller has just created or renamed in DIR durable.
 * Concurrent callers share directory fsyncs (group commit): a caller whose
 * entry is covered by an fsync that started after it waits for that one.
 * Thread-safe. Returns 0 or an errno value. */
int gm_fsync_directory_shared (const char *dir);
