/* spool.c — durable queue files (DESIGN.md §5).
 *
 * Owns the queue file format described in spool.h, queue ids, the write path
 * (incoming/ → fsync → rename into queue/ → directory fsync shared by
 * concurrent writers: group commit), reading a queue file back with a
 * defensive parser, in-place recipient marks, and start-up recovery. */
#include "config.h"
#include "spool.h"
#include "dirsync.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define QUEUE_MAGIC "GUILLEMOT-QUEUE 1"
#define ID_DIGITS 14            /* microseconds since the epoch, upper-case hex */
#define MAX_ID_LENGTH 64
#define APPEND_DIGITS 16        /* the O record's value: an offset in hex, or dashes */
/* Recovery reads this much of each file: enough for the records of any
 * ordinary message, and the message itself is not needed to validate it. */
#define RECOVERY_PREFIX (64 * 1024)

G_DEFINE_QUARK (gm-spool-error-quark, gm_spool_error)

static const char *const spool_dirs[] = {
  "incoming", "queue", "deferred", "hold", "corrupt", "quarantine", "free",
};

/* ---- Errors ---- */

static gboolean
set_errno_error (GError **error, int saved_errno, const char *what, const char *path)
{
  int code = GM_SPOOL_ERROR_IO;
  if (saved_errno == ENOSPC
#ifdef EDQUOT
      || saved_errno == EDQUOT
#endif
      )
    code = GM_SPOOL_ERROR_NO_SPACE;
  g_set_error (error, GM_SPOOL_ERROR, code, "%s %s: %s", what, path, g_strerror (saved_errno));
  return FALSE;
}

/* ---- Envelopes ---- */

static void
rcpt_free (gpointer data)
{
  GmSpoolRcpt *rcpt = data;
  g_free (rcpt->address);
  g_free (rcpt->destination);
  g_free (rcpt);
}

GmEnvelope *
gm_envelope_new (void)
{
  GmEnvelope *env = g_new0 (GmEnvelope, 1);
  env->rcpts = g_ptr_array_new_with_free_func (rcpt_free);
  return env;
}

void
gm_envelope_free (GmEnvelope *env)
{
  if (!env)
    return;
  g_free (env->id);
  g_free (env->client);
  g_free (env->helo);
  g_free (env->protocol);
  g_free (env->sender);
  g_free (env->quarantine);
  g_ptr_array_unref (env->rcpts);
  g_free (env);
}

void
gm_envelope_add_rcpt (GmEnvelope *env, const char *address, GmTransport transport,
                      const char *destination)
{
  g_return_if_fail (env != NULL && address != NULL);
  GmSpoolRcpt *rcpt = g_new0 (GmSpoolRcpt, 1);
  rcpt->address = g_strdup (address);
  rcpt->transport = transport;
  rcpt->destination = g_strdup (destination);
  rcpt->status = GM_RCPT_PENDING;
  rcpt->append_start = -1;
  g_ptr_array_add (env->rcpts, rcpt);
}

static GmSpoolRcpt *
rcpt_at (const GmEnvelope *env, guint index)
{
  return g_ptr_array_index (env->rcpts, index);
}

static gboolean
status_is_valid (int status)
{
  return status == GM_RCPT_PENDING || status == GM_RCPT_DELIVERED || status == GM_RCPT_FAILED;
}

static const char *
transport_name (GmTransport transport)
{
  switch (transport)
    {
    case GM_TRANSPORT_MAILDIR: return "maildir";
    case GM_TRANSPORT_MBOX: return "mbox";
    default: return "none";
    }
}

static gboolean
transport_from_name (const char *name, gsize len, GmTransport *transport)
{
  static const GmTransport all[] = { GM_TRANSPORT_NONE, GM_TRANSPORT_MAILDIR, GM_TRANSPORT_MBOX };
  for (gsize i = 0; i < G_N_ELEMENTS (all); i++)
    {
      const char *candidate = transport_name (all[i]);
      if (strlen (candidate) == len && memcmp (candidate, name, len) == 0)
        {
          *transport = all[i];
          return TRUE;
        }
    }
  return FALSE;
}

/* Queue ids become file names: keep them short and harmless. */
static gboolean
id_is_valid (const char *id)
{
  gsize len = strlen (id);
  if (len == 0 || len > MAX_ID_LENGTH)
    return FALSE;
  for (const char *p = id; *p; p++)
    if (!g_ascii_isalnum (*p))
      return FALSE;
  return TRUE;
}

/* Local deliveries must never go to a path relative to wherever we run. */
static gboolean
destination_is_valid (GmTransport transport, const char *destination)
{
  if (transport == GM_TRANSPORT_NONE)
    return TRUE;
  return destination != NULL && destination[0] == '/';
}

/* ---- Queue ids ---- */

G_LOCK_DEFINE_STATIC (last_id);
static gint64 last_id;

char *
gm_spool_new_id (void)
{
  gint64 now = g_get_real_time ();
  G_LOCK (last_id);
  /* Strictly increasing even when the clock stalls or steps back. */
  gint64 id = MAX (now, last_id + 1);
  last_id = id;
  G_UNLOCK (last_id);
  return g_strdup_printf ("%0" G_STRINGIFY (ID_DIGITS) G_GINT64_MODIFIER "X", (guint64) id);
}

gint64
gm_spool_id_time (const char *id)
{
  if (!id_is_valid (id))
    return -1;
  return (gint64) g_ascii_strtoull (id, NULL, 16);
}

/* An id found on disk: later ids must sort after it even if the clock went back
 * since it was made. */
static void
note_id_in_use (const char *name)
{
  if (strlen (name) != ID_DIGITS)
    return;
  for (const char *p = name; *p; p++)
    if (!g_ascii_isxdigit (*p) || g_ascii_islower (*p))
      return;
  gint64 value = (gint64) g_ascii_strtoull (name, NULL, 16);
  G_LOCK (last_id);
  last_id = MAX (last_id, value);
  G_UNLOCK (last_id);
}

/* ---- Small file-system helpers ---- */

static char *
spool_path (const char *state_dir, const char *subdir, const char *name)
{
  return g_build_filename (state_dir, "spool", subdir, name, NULL);
}



/* Read up to COUNT bytes from the start of FD; fewer only at end of file. */
static gboolean
read_prefix (int fd, char *buf, gsize count, gsize *got)
{
  *got = 0;
  while (*got < count)
    {
      ssize_t n = pread (fd, buf + *got, count - *got, *got);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        return FALSE;
      if (n == 0)
        break;
      *got += n;
    }
  return TRUE;
}

gboolean
gm_spool_init (const char *state_dir, GError **error)
{
  g_return_val_if_fail (state_dir != NULL, FALSE);
  for (gsize i = 0; i < G_N_ELEMENTS (spool_dirs); i++)
    {
      g_autofree char *path = spool_path (state_dir, spool_dirs[i], NULL);
      if (g_mkdir_with_parents (path, 0700) < 0)
        return set_errno_error (error, errno, "mkdir", path);
    }
  /* The subdirectories themselves must survive a crash before any file in
   * them is acknowledged. Start-up only, so the cost does not matter. */
  g_autofree char *spool = g_build_filename (state_dir, "spool", NULL);
  const char *const parents[] = { spool, state_dir };
  for (gsize i = 0; i < G_N_ELEMENTS (parents); i++)
    {
      int e = gm_fsync_directory (parents[i]);
      if (e)
        return set_errno_error (error, e, "fsync", parents[i]);
    }
  return TRUE;
}

/* ---- Writing ---- */

static gboolean
envelope_is_writable (const GmEnvelope *env, GError **error)
{
  const char *const fields[] = { env->client, env->helo, env->protocol, env->sender };
  const char *problem = NULL;
  if (!env->id || !id_is_valid (env->id))
    problem = "the queue id is not 1 to 64 letters and digits";
  else if (env->arrival < 0)
    problem = "the arrival time is negative";
  for (gsize i = 0; i < G_N_ELEMENTS (fields) && !problem; i++)
    if (fields[i] && strchr (fields[i], '\n'))
      problem = "an envelope field contains a line feed";
  for (guint i = 0; i < env->rcpts->len && !problem; i++)
    {
      const GmSpoolRcpt *rcpt = rcpt_at (env, i);
      if (!rcpt->address || !*rcpt->address || strchr (rcpt->address, '\n'))
        problem = "a recipient address is empty or contains a line feed";
      else if (!destination_is_valid (rcpt->transport, rcpt->destination)
               || (rcpt->destination && strchr (rcpt->destination, '\n')))
        problem = "a recipient's destination is not an absolute path";
      else if (!status_is_valid (rcpt->status))
        problem = "a recipient's status is not P, D or F";
    }
  if (!problem && env->queued_rules && env->queued_rules != GM_RCPT_PENDING
      && env->queued_rules != GM_RCPT_DELIVERED)
    problem = "the queued rules' status is not P or D";
  if (problem)
    {
      g_set_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_IO, "cannot spool message %s: %s",
                   env->id ? env->id : "(no id)", problem);
      return FALSE;
    }
  return TRUE;
}

static void
append_record (GString *records, const char *tag, const char *value)
{
  g_string_append (records, tag);
  g_string_append_c (records, ' ');
  g_string_append (records, value ? value : "");
  g_string_append_c (records, '\n');
}

/* The value of an O record: APPEND_DIGITS hex digits, or dashes for none. */
static void
format_append_start (GString *out, gint64 start)
{
  if (start < 0)
    for (int i = 0; i < APPEND_DIGITS; i++)
      g_string_append_c (out, '-');
  else
    g_string_append_printf (out, "%0" G_STRINGIFY (APPEND_DIGITS) G_GINT64_MODIFIER "X",
                            (guint64) start);
}

/* The records in front of the message; fills each recipient's status_offset
 * and append_offset. */
GString *
gm_spool_format (GmEnvelope *env, gsize message_len, GError **error)
{
  g_return_val_if_fail (env != NULL, NULL);
  if (!envelope_is_writable (env, error))
    return NULL;
  GString *records = g_string_sized_new (256 + 128 * env->rcpts->len);
  g_string_append (records, QUEUE_MAGIC "\n");
  append_record (records, "I", env->id);
  g_string_append_printf (records, "A %" G_GINT64_FORMAT "\n", env->arrival);
  append_record (records, "C", env->client);
  append_record (records, "H", env->helo);
  append_record (records, "P", env->protocol);
  append_record (records, "S", env->sender);
  if (env->queued_rules)
    {
      g_string_append_c (records, 'Q');
      env->queued_offset = records->len;
      g_string_append_c (records, env->queued_rules);
      g_string_append_c (records, '\n');
    }
  for (guint i = 0; i < env->rcpts->len; i++)
    {
      GmSpoolRcpt *rcpt = rcpt_at (env, i);
      g_string_append_c (records, 'R');
      rcpt->status_offset = records->len;
      g_string_append_c (records, (char) rcpt->status);
      g_string_append_c (records, ' ');
      g_string_append (records, rcpt->address);
      g_string_append (records, "\nT ");
      g_string_append (records, transport_name (rcpt->transport));
      g_string_append_c (records, ' ');
      g_string_append (records, rcpt->destination ? rcpt->destination : "");
      g_string_append_c (records, '\n');
      if (rcpt->transport == GM_TRANSPORT_MBOX)
        {
          g_string_append (records, "O ");
          rcpt->append_offset = records->len;
          format_append_start (records, rcpt->append_start);
          g_string_append_c (records, '\n');
        }
      else
        rcpt->append_offset = 0;
    }
  g_string_append_printf (records, "M %" G_GSIZE_FORMAT "\n", message_len);
  return records;
}

/* ---- Recycled queue files ----
 *
 * A delivered queue file is not unlinked but renamed into free/ and
 * overwritten there by a later message before its rename into queue/. Creating and deleting a file
 * per message costs an inode allocation and release each time (on ext4
 * without a journal, every allocation also scans the inodes freed in the last
 * seconds); renames and overwrites do not. A file in free/ is garbage at any
 * instant: recovery empties free/. */

#define MAX_FREE_FILES 256

G_LOCK_DEFINE_STATIC (free_files);
static GQueue free_files = G_QUEUE_INIT;        /* of char* paths in incoming/ */

/* A free file in FREE_DIR, or NULL. (Files of another spool, as in tests
 * that use several, are dropped from the pool.) */
static char *
take_free_file (const char *free_dir)
{
  gsize dir_len = strlen (free_dir);
  for (;;)
    {
      G_LOCK (free_files);
      char *path = g_queue_pop_head (&free_files);
      G_UNLOCK (free_files);
      if (!path || (strncmp (path, free_dir, dir_len) == 0 && path[dir_len] == '/'))
        return path;
      g_free (path);
    }
}

/* Offer PATH (a queue file whose message is done) for reuse. FALSE: the pool
 * is full or the rename failed, and the caller unlinks it. */
static gboolean
recycle_file (const char *path)
{
  G_LOCK (free_files);
  gboolean room = free_files.length < MAX_FREE_FILES;
  G_UNLOCK (free_files);
  if (!room)
    return FALSE;
  g_autofree char *queue_dir = g_path_get_dirname (path);
  g_autofree char *spool_dir = g_path_get_dirname (queue_dir);
  g_autofree char *base = g_path_get_basename (path);
  char *free_path = g_build_filename (spool_dir, "free", base, NULL);
  if (rename (path, free_path) < 0)
    {
      g_free (free_path);
      return FALSE;
    }
  G_LOCK (free_files);
  g_queue_push_tail (&free_files, free_path);
  G_UNLOCK (free_files);
  return TRUE;
}

/* Open a file to write a new queue file into: a recycled one from FREE_DIR
 * when there is one, else INCOMING_DIR/ID created. */
static int
open_incoming (const char *incoming_dir, const char *free_dir, const char *id, char **path,
               gboolean *recycled, GError **error)
{
  char *free_path;
  while ((free_path = take_free_file (free_dir)))
    {
      int fd = open (free_path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
      if (fd >= 0)
        {
          *path = free_path;
          *recycled = TRUE;
          return fd;
        }
      g_free (free_path);
    }
  *recycled = FALSE;
  *path = g_build_filename (incoming_dir, id, NULL);
  int fd = open (*path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    {
      set_errno_error (error, errno, "create", *path);
      g_clear_pointer (path, g_free);
    }
  return fd;
}

static gboolean
write_incoming (int fd, const char *path, gboolean recycled, GString *records,
                const char *header, gsize header_len, const char *body, gsize body_len,
                GError **error)
{
  struct iovec iov[] = {
    { records->str, records->len },
    { (void *) header, header_len },
    { (void *) body, body_len },
  };
  const char *what = "write";
  gboolean ok = gm_write_all (fd, iov, G_N_ELEMENTS (iov));
  /* A recycled file may be longer than this message: cut its old tail. */
  if (ok && recycled && !(ok = ftruncate (fd, records->len + header_len + body_len) == 0))
    what = "truncate";
  /* The size is the only metadata a reader needs, and fdatasync covers it. */
  if (ok && !(ok = fdatasync (fd) == 0))
    what = "fsync";
  int e = errno;
  if (close (fd) < 0 && ok)
    {
      ok = FALSE;
      what = "close";
      e = errno;
    }
  if (!ok)
    {
      unlink (path);
      return set_errno_error (error, e, what, path);
    }
  return TRUE;
}

/* Write a new queue file for ID in INCOMING_DIR (or a recycled one), durably;
 * *PATH is where it is. On failure nothing is left. */
static gboolean
write_queue_file (const char *incoming_dir, const char *free_dir, const char *id,
                  GString *records, const char *header, gsize header_len, const char *body,
                  gsize body_len, char **path, gboolean *recycled, GError **error)
{
  g_clear_pointer (path, g_free);
  int fd = open_incoming (incoming_dir, free_dir, id, path, recycled, error);
  if (fd < 0)
    return FALSE;
  return write_incoming (fd, *path, *recycled, records, header, header_len, body, body_len, error);
}

/* Unlink every file of FREE_DIR kept for reuse; returns how many. */
static guint
drop_free_files (const char *free_dir)
{
  guint n = 0;
  char *path;
  while ((path = take_free_file (free_dir)))
    {
      if (unlink (path) == 0)
        n++;
      g_free (path);
    }
  return n;
}

/* Create quarantine/NAME (QUEUE_DIR) if missing, durably: the messages in
 * it are acknowledged. */
static gboolean
make_quarantine_dir (const char *queue_dir, GError **error)
{
  if (g_file_test (queue_dir, G_FILE_TEST_IS_DIR))
    return TRUE;
  if (g_mkdir_with_parents (queue_dir, 0700) < 0)
    return set_errno_error (error, errno, "create", queue_dir);
  g_autofree char *parent = g_path_get_dirname (queue_dir);
  int e = gm_fsync_directory (parent);
  if (e)
    return set_errno_error (error, e, "fsync", parent);
  return TRUE;
}

/* Write ENV and the message into QUEUED, in QUEUE_DIR: through incoming/
 * (or a recycled file), fdatasync, rename (over an existing file only with
 * REPLACE), and the directory fsync shared with other writers. */
static gboolean
spool_write_to (const char *state_dir, GmEnvelope *env, const char *queue_dir,
                const char *queued, gboolean replace, const char *header, gsize header_len,
                const char *body, gsize body_len, GError **error)
{
  g_return_val_if_fail (state_dir != NULL && env != NULL, FALSE);
  g_return_val_if_fail (header != NULL || header_len == 0, FALSE);
  g_return_val_if_fail (body != NULL || body_len == 0, FALSE);
  g_autoptr (GString) records = gm_spool_format (env, header_len + body_len, error);
  if (!records)
    return FALSE;
  g_autofree char *incoming_dir = spool_path (state_dir, "incoming", NULL);
  g_autofree char *free_dir = spool_path (state_dir, "free", NULL);
  g_autofree char *incoming = NULL;
  g_autoptr (GError) local = NULL;
  gboolean recycled = FALSE;
  if (!write_queue_file (incoming_dir, free_dir, env->id, records, header, header_len, body,
                         body_len, &incoming, &recycled, &local))
    {
      /* Files kept for reuse take space that a full disk needs more: give
       * them up (the one that failed is gone already) and try once more. */
      guint dropped = 0;
      if (g_error_matches (local, GM_SPOOL_ERROR, GM_SPOOL_ERROR_NO_SPACE)
          && (dropped = drop_free_files (free_dir) + (recycled ? 1 : 0)) > 0)
        {
          gm_log (env->id, "spool=free, status=emptied, files=%u, reason=%s", dropped,
                  local->message);
          g_clear_error (&local);
          write_queue_file (incoming_dir, free_dir, env->id, records, header, header_len, body,
                            body_len, &incoming, &recycled, &local);
        }
      if (local)
        {
          g_propagate_error (error, g_steal_pointer (&local));
          return FALSE;
        }
    }
  if ((replace ? rename (incoming, queued) : gm_rename_noreplace (incoming, queued)) < 0)
    {
      int e = errno;
      unlink (incoming);
      return set_errno_error (error, e, "rename to", queued);
    }
  int e = gm_fsync_directory_shared (queue_dir);
  if (e)
    {
      if (!replace)
        unlink (queued);
      return set_errno_error (error, e, "fsync", queue_dir);
    }
  return TRUE;
}

gboolean
gm_spool_write (const char *state_dir, GmEnvelope *env, const char *header, gsize header_len,
                const char *body, gsize body_len, GError **error)
{
  g_return_val_if_fail (state_dir != NULL && env != NULL, FALSE);
  g_return_val_if_fail (header != NULL || header_len == 0, FALSE);
  g_return_val_if_fail (body != NULL || body_len == 0, FALSE);
  /* A quarantined message goes to quarantine/NAME/ instead of queue/. */
  g_autofree char *queue_dir = env->quarantine
    ? g_build_filename (state_dir, "spool", "quarantine", env->quarantine, NULL)
    : spool_path (state_dir, "queue", NULL);
  g_autofree char *queued = g_build_filename (queue_dir, env->id, NULL);
  if (env->quarantine && !make_quarantine_dir (queue_dir, error))
    return FALSE;
  return spool_write_to (state_dir, env, queue_dir, queued, FALSE, header, header_len,
                         body, body_len, error);
}

/* ---- Parsing ----
 *
 * A queue file is untrusted input: it may be truncated by a crash or damaged
 * on disk. Every access is bounds-checked and anything unexpected is
 * GM_SPOOL_ERROR_CORRUPT. The parser can work on a prefix of the file and ask
 * for more, so that recovery need not read whole messages. */

typedef enum
{
  PARSE_OK,
  PARSE_NEED_MORE,              /* the records run past the bytes read so far */
  PARSE_CORRUPT,
} ParseResult;

typedef struct
{
  const char *data;
  gsize len;                    /* bytes available in DATA */
  guint64 file_size;            /* bytes in the file: more than LEN when DATA is a prefix */
  gsize pos;
  const char *line;             /* the current line, without its LF */
  gsize line_len;
  gsize line_start;
} Cursor;

static ParseResult corrupt (const Cursor *c, GError **error, const char *fmt, ...) G_GNUC_PRINTF (3, 4);

static ParseResult
corrupt (const Cursor *c, GError **error, const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  g_autofree char *msg = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  g_set_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT, "corrupt queue file at byte %"
               G_GSIZE_FORMAT ": %s", c->line_start, msg);
  return PARSE_CORRUPT;
}

static ParseResult
next_line (Cursor *c, GError **error)
{
  c->line_start = c->pos;
  const char *start = c->data + c->pos;
  const char *lf = memchr (start, '\n', c->len - c->pos);
  if (!lf)
    {
      if (c->len < c->file_size)
        return PARSE_NEED_MORE;
      return corrupt (c, error, "truncated before the message");
    }
  c->line = start;
  c->line_len = lf - start;
  c->pos += c->line_len + 1;
  if (memchr (c->line, '\0', c->line_len))
    return corrupt (c, error, "NUL byte in a record");
  return PARSE_OK;
}

/* The current line is "TAG VALUE"? */
static gboolean
line_has_tag (const Cursor *c, char tag)
{
  return c->line_len >= 2 && c->line[0] == tag && c->line[1] == ' ';
}

static ParseResult
expect_record (Cursor *c, char tag, char **value, GError **error)
{
  ParseResult r = next_line (c, error);
  if (r != PARSE_OK)
    return r;
  if (!line_has_tag (c, tag))
    return corrupt (c, error, "expected the %c record", tag);
  *value = g_strndup (c->line + 2, c->line_len - 2);
  return PARSE_OK;
}

/* Strict decimal: digits only, no sign, no overflow past MAX. */
static gboolean
parse_decimal (const char *text, gsize len, guint64 max, guint64 *out)
{
  guint64 value = 0;
  if (len == 0)
    return FALSE;
  for (gsize i = 0; i < len; i++)
    {
      if (!g_ascii_isdigit (text[i]))
        return FALSE;
      guint digit = text[i] - '0';
      if (value > (max - digit) / 10)
        return FALSE;
      value = value * 10 + digit;
    }
  *out = value;
  return TRUE;
}

static ParseResult
expect_number (Cursor *c, char tag, guint64 max, guint64 *value, GError **error)
{
  ParseResult r = next_line (c, error);
  if (r != PARSE_OK)
    return r;
  if (!line_has_tag (c, tag))
    return corrupt (c, error, "expected the %c record", tag);
  if (!parse_decimal (c->line + 2, c->line_len - 2, max, value))
    return corrupt (c, error, "the %c record is not a number", tag);
  return PARSE_OK;
}

/* The current line is "R<status> <address>"; the T record follows. */
static ParseResult
parse_recipient (Cursor *c, GmEnvelope *env, GError **error)
{
  if (c->line_len < 4 || c->line[2] != ' ')
    return corrupt (c, error, "malformed R record");
  if (!status_is_valid (c->line[1]))
    return corrupt (c, error, "recipient status is not P, D or F");
  GmSpoolRcpt *rcpt = g_new0 (GmSpoolRcpt, 1);
  g_ptr_array_add (env->rcpts, rcpt);
  rcpt->status = c->line[1];
  rcpt->status_offset = c->line_start + 1;
  rcpt->append_start = -1;
  rcpt->address = g_strndup (c->line + 3, c->line_len - 3);

  ParseResult r = next_line (c, error);
  if (r != PARSE_OK)
    return r;
  if (!line_has_tag (c, 'T'))
    return corrupt (c, error, "expected the T record after an R record");
  const char *name = c->line + 2;
  const char *space = memchr (name, ' ', c->line_len - 2);
  if (!space || !transport_from_name (name, space - name, &rcpt->transport))
    return corrupt (c, error, "unknown transport in the T record");
  rcpt->destination = g_strndup (space + 1, c->line + c->line_len - space - 1);
  if (!destination_is_valid (rcpt->transport, rcpt->destination))
    return corrupt (c, error, "the destination is not an absolute path");
  return PARSE_OK;
}

/* The current line is "O VALUE", which must follow the T record of an mbox
 * recipient. VALUE is rewritten in place before an append, and a crash can
 * tear that write where it crosses a page: a mix of the old and the new
 * characters. No whole copy of the message is in the mbox then (see
 * append_locked in deliver-local.c), so a value that is not all hex digits
 * reads as "no append begun". */
static ParseResult
parse_append_start (Cursor *c, GmEnvelope *env, GError **error)
{
  GmSpoolRcpt *rcpt = env->rcpts->len ? rcpt_at (env, env->rcpts->len - 1) : NULL;
  if (!rcpt || rcpt->transport != GM_TRANSPORT_MBOX || rcpt->append_offset != 0)
    return corrupt (c, error, "an O record not after the T record of an mbox recipient");
  const char *value = c->line + 2;
  if (c->line_len != 2 + APPEND_DIGITS)
    return corrupt (c, error, "the O record is not %d characters", APPEND_DIGITS);
  gboolean hex = TRUE;
  for (int i = 0; i < APPEND_DIGITS; i++)
    {
      gboolean digit = g_ascii_isxdigit (value[i]) && !g_ascii_islower (value[i]);
      if (!digit && value[i] != '-')
        return corrupt (c, error, "the O record holds other than hex digits and dashes");
      hex = hex && digit;
    }
  /* A value past G_MAXINT64 is no offset either. */
  rcpt->append_start = hex && value[0] < '8' ? (gint64) g_ascii_strtoull (value, NULL, 16) : -1;
  rcpt->append_offset = c->line_start + 2;
  return PARSE_OK;
}

#define TRY(expr) do { ParseResult try_result = (expr); \
                       if (try_result != PARSE_OK) return try_result; } while (0)

/* Parse the records in the LEN bytes at DATA, which start a file of FILE_SIZE
 * bytes. On PARSE_OK *ENV_OUT is set and *MESSAGE_OFFSET is where the message
 * starts; the message runs to the end of the file. */
static ParseResult
parse_records (const char *data, gsize len, guint64 file_size, GmEnvelope **env_out,
               gsize *message_offset, GError **error)
{
  Cursor c = { .data = data, .len = len, .file_size = file_size };
  g_autoptr (GmEnvelope) env = gm_envelope_new ();
  guint64 number = 0;

  TRY (next_line (&c, error));
  if (c.line_len != strlen (QUEUE_MAGIC) || memcmp (c.line, QUEUE_MAGIC, c.line_len) != 0)
    return corrupt (&c, error, "not a version 1 queue file");
  TRY (expect_record (&c, 'I', &env->id, error));
  if (!id_is_valid (env->id))
    return corrupt (&c, error, "the queue id is not letters and digits");
  TRY (expect_number (&c, 'A', G_MAXINT64, &number, error));
  env->arrival = (gint64) number;
  TRY (expect_record (&c, 'C', &env->client, error));
  TRY (expect_record (&c, 'H', &env->helo, error));
  TRY (expect_record (&c, 'P', &env->protocol, error));
  TRY (expect_record (&c, 'S', &env->sender, error));
  for (;;)
    {
      TRY (next_line (&c, error));
      if (c.line_len > 0 && c.line[0] == 'R')
        TRY (parse_recipient (&c, env, error));
      else if (c.line_len == 2 && c.line[0] == 'Q' && !env->queued_rules && env->rcpts->len == 0)
        {
          if (c.line[1] != GM_RCPT_PENDING && c.line[1] != GM_RCPT_DELIVERED)
            return corrupt (&c, error, "the Q record is not P or D");
          env->queued_rules = c.line[1];
          env->queued_offset = c.line_start + 1;
        }
      else if (line_has_tag (&c, 'O'))
        TRY (parse_append_start (&c, env, error));
      else if (line_has_tag (&c, 'M'))
        break;
      else
        return corrupt (&c, error, "expected a Q, an R, an O or the M record");
    }
  if (!parse_decimal (c.line + 2, c.line_len - 2, G_MAXUINT64, &number))
    return corrupt (&c, error, "the M record is not a number");
  if (number != c.file_size - c.pos)
    return corrupt (&c, error, "the message has %" G_GUINT64_FORMAT " bytes, the M record says %"
                    G_GUINT64_FORMAT, c.file_size - c.pos, number);
  *message_offset = c.pos;
  *env_out = g_steal_pointer (&env);
  return PARSE_OK;
}

#undef TRY

GmEnvelope *
gm_spool_parse (const char *data, gsize len, gsize *message_offset, GError **error)
{
  g_return_val_if_fail (data != NULL || len == 0, NULL);
  GmEnvelope *env = NULL;
  gsize offset = 0;
  if (parse_records (data ? data : "", len, len, &env, &offset, error) != PARSE_OK)
    return NULL;
  if (message_offset)
    *message_offset = offset;
  return env;
}

/* ---- Reading ---- */

/* Read and parse the queue file open on FD, which must be ID. With MESSAGE
 * non-NULL the message is read too; without, only as much as the records need. */
static GmEnvelope *
load_queue_file (int fd, const char *path, const char *id, char **message, gsize *message_len,
                 GError **error)
{
  struct stat st;
  if (fstat (fd, &st) < 0)
    {
      set_errno_error (error, errno, "stat", path);
      return NULL;
    }
  if (!S_ISREG (st.st_mode))
    {
      g_set_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT, "%s: not a regular file", path);
      return NULL;
    }
  guint64 size = st.st_size;
  if (size >= G_MAXSIZE)
    {
      g_set_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT, "%s: too large", path);
      return NULL;
    }

  g_autoptr (GmEnvelope) env = NULL;
  g_autofree char *buf = NULL;
  gsize want = message ? size : MIN (size, RECOVERY_PREFIX);
  gsize got, offset = 0;
  ParseResult r;
  for (;;)
    {
      buf = g_try_malloc (want + 1);
      if (!buf)
        {
          g_set_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_IO, "%s: out of memory reading %"
                       G_GUINT64_FORMAT " bytes", path, size);
          return NULL;
        }
      if (!read_prefix (fd, buf, want, &got))
        {
          set_errno_error (error, errno, "read", path);
          return NULL;
        }
      /* A file that shrank since fstat ends where reading ended. */
      guint64 file_size = got < want ? got : size;
      r = parse_records (buf, got, file_size, &env, &offset, error);
      if (r != PARSE_NEED_MORE)
        break;
      g_clear_pointer (&buf, g_free);
      want = size;
    }
  if (r != PARSE_OK)
    {
      g_prefix_error (error, "%s: ", path);
      return NULL;
    }
  if (strcmp (env->id, id) != 0)
    {
      g_set_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT,
                   "%s: the file says it is queue id %s", path, env->id);
      return NULL;
    }
  if (message)
    {
      /* Keep one buffer: move the message to its start (records are small). */
      *message_len = got - offset;
      memmove (buf, buf + offset, *message_len);
      buf[*message_len] = '\0';
      *message = g_steal_pointer (&buf);
    }
  return g_steal_pointer (&env);
}

/* Open queue file NAME; a name that cannot be a queue id, a symbolic link or a
 * directory is corrupt. Returns -1 with ERROR set on failure. */
static int
open_queue_file (const char *path, const char *name, int flags, GError **error)
{
  if (!id_is_valid (name))
    {
      g_set_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT, "%s: not a queue id", path);
      return -1;
    }
  /* O_NONBLOCK: a FIFO planted in queue/ must not hang us. */
  int fd = open (path, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0)
    {
      if (errno == ELOOP || errno == EISDIR)
        g_set_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT, "%s: not a regular file", path);
      else
        set_errno_error (error, errno, "open", path);
    }
  return fd;
}

GmQueueFile *
gm_queue_file_open (const char *state_dir, const char *id, GError **error)
{
  g_return_val_if_fail (state_dir != NULL && id != NULL, NULL);
  g_autofree char *path = spool_path (state_dir, "queue", id);
  int fd = open_queue_file (path, id, O_RDWR, error);
  if (fd < 0)
    return NULL;
  char *message = NULL;
  gsize message_len = 0;
  GmEnvelope *env = load_queue_file (fd, path, id, &message, &message_len, error);
  if (!env)
    {
      close (fd);
      return NULL;
    }
  GmQueueFile *qf = g_new0 (GmQueueFile, 1);
  qf->fd = fd;
  qf->path = g_steal_pointer (&path);
  qf->env = env;
  qf->message = message;
  qf->message_len = message_len;
  return qf;
}

/* Overwrite LEN bytes of a record at OFFSET (no fsync); WHAT names the step
 * in the error. */
static gboolean
rewrite_in_place (GmQueueFile *qf, goffset offset, const char *bytes, gsize len,
                  const char *what, GError **error)
{
  ssize_t n;
  do
    n = pwrite (qf->fd, bytes, len, offset);
  while (n < 0 && errno == EINTR);
  if (n != (ssize_t) len)
    return set_errno_error (error, n < 0 ? errno : EIO, what, qf->path);
  return TRUE;
}

gboolean
gm_queue_file_mark (GmQueueFile *qf, guint index, GmRcptStatus status, GError **error)
{
  g_return_val_if_fail (qf != NULL && index < qf->env->rcpts->len, FALSE);
  g_return_val_if_fail (status_is_valid (status), FALSE);
  GmSpoolRcpt *rcpt = rcpt_at (qf->env, index);
  char byte = (char) status;
  if (!rewrite_in_place (qf, rcpt->status_offset, &byte, 1, "mark recipient in", error))
    return FALSE;
  rcpt->status = status;
  return TRUE;
}

gboolean
gm_queue_file_mark_queued (GmQueueFile *qf, GError **error)
{
  g_return_val_if_fail (qf != NULL && qf->env->queued_rules, FALSE);
  char byte = GM_RCPT_DELIVERED;
  if (!rewrite_in_place (qf, qf->env->queued_offset, &byte, 1, "mark queued rules in", error))
    return FALSE;
  qf->env->queued_rules = byte;
  return TRUE;
}

gboolean
gm_queue_file_rewrite (GmQueueFile *qf, GError **error)
{
  g_return_val_if_fail (qf != NULL, FALSE);
  g_autofree char *queue_dir = g_path_get_dirname (qf->path);
  g_autofree char *spool_dir = g_path_get_dirname (queue_dir);
  g_autofree char *state_dir = g_path_get_dirname (spool_dir);
  if (qf->env->queued_rules)
    qf->env->queued_rules = GM_RCPT_DELIVERED;
  if (!spool_write_to (state_dir, qf->env, queue_dir, qf->path, TRUE, qf->message,
                       qf->message_len, NULL, 0, error))
    return FALSE;
  /* The status offsets now point into the new file. */
  int fd = open (qf->path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return set_errno_error (error, errno, "open", qf->path);
  close (qf->fd);
  qf->fd = fd;
  return TRUE;
}

gboolean
gm_queue_file_quarantine (GmQueueFile *qf, const char *name, GError **error)
{
  g_return_val_if_fail (qf != NULL && name != NULL, FALSE);
  g_autofree char *queue_dir = g_path_get_dirname (qf->path);
  g_autofree char *spool_dir = g_path_get_dirname (queue_dir);
  g_autofree char *dir = g_build_filename (spool_dir, "quarantine", name, NULL);
  g_autofree char *target = g_build_filename (dir, qf->env->id, NULL);
  if (!make_quarantine_dir (dir, error))
    return FALSE;
  if (gm_rename_noreplace (qf->path, target) < 0)
    return set_errno_error (error, errno, "rename to", target);
  int e = gm_fsync_directory_shared (dir);
  if (e)
    return set_errno_error (error, e, "fsync", dir);
  return TRUE;
}

gboolean
gm_queue_file_note_append (GmQueueFile *qf, guint index, gint64 offset, GError **error)
{
  g_return_val_if_fail (qf != NULL && index < qf->env->rcpts->len && offset >= 0, FALSE);
  GmSpoolRcpt *rcpt = rcpt_at (qf->env, index);
  g_return_val_if_fail (rcpt->append_offset > 0, FALSE);
  g_autoptr (GString) value = g_string_new (NULL);
  format_append_start (value, offset);
  if (!rewrite_in_place (qf, rcpt->append_offset, value->str, value->len,
                         "record mbox offset in", error))
    return FALSE;
  if (fdatasync (qf->fd) < 0)
    return set_errno_error (error, errno, "fsync", qf->path);
  rcpt->append_start = offset;
  return TRUE;
}

gboolean
gm_queue_file_sync (GmQueueFile *qf, GError **error)
{
  g_return_val_if_fail (qf != NULL, FALSE);
  if (fdatasync (qf->fd) < 0)
    return set_errno_error (error, errno, "fsync", qf->path);
  return TRUE;
}

gboolean
gm_queue_file_remove (GmQueueFile *qf, GError **error)
{
  g_return_val_if_fail (qf != NULL, FALSE);
  /* No directory fsync: should the removal be lost in a crash, the file comes
   * back with every recipient marked done and is removed again. */
  if (recycle_file (qf->path))
    return TRUE;
  if (unlink (qf->path) < 0 && errno != ENOENT)
    return set_errno_error (error, errno, "remove", qf->path);
  return TRUE;
}

void
gm_queue_file_close (GmQueueFile *qf)
{
  if (!qf)
    return;
  if (qf->fd >= 0)
    close (qf->fd);
  g_free (qf->path);
  gm_envelope_free (qf->env);
  g_free (qf->message);
  g_free (qf);
}

/* ---- Recovery ---- */

/* Call FUNC for each name in DIR but "." and "..". */
static gboolean
for_each_entry (const char *dir, gboolean (*func) (const char *dir, const char *name,
                                                   gpointer data, GError **error),
                gpointer data, GError **error)
{
  DIR *d = opendir (dir);
  if (!d)
    return set_errno_error (error, errno, "open directory", dir);
  gboolean ok = TRUE;
  for (;;)
    {
      errno = 0;
      struct dirent *entry = readdir (d);
      if (!entry)
        {
          if (errno)
            ok = set_errno_error (error, errno, "read directory", dir);
          break;
        }
      if (strcmp (entry->d_name, ".") == 0 || strcmp (entry->d_name, "..") == 0)
        continue;
      if (!(ok = func (dir, entry->d_name, data, error)))
        break;
    }
  closedir (d);
  return ok;
}

/* The name as it may appear in a log line: file names can hold anything. */
static char *
printable_name (const char *name)
{
  return g_strescape (name, NULL);
}

static gboolean
remove_incoming (const char *dir, const char *name, gpointer data, GError **error)
{
  g_autofree char *path = g_build_filename (dir, name, NULL);
  g_autofree char *shown = printable_name (name);
  /* Never acknowledged, so the client still has the message. */
  if (unlink (path) < 0 && errno != ENOENT)
    gm_log (NULL, "spool=incoming, file=%s, status=not removed, reason=%s", shown,
            g_strerror (errno));
  else
    gm_log (id_is_valid (name) ? name : NULL,
            "spool=incoming, status=removed, reason=never acknowledged");
  return TRUE;
}

/* A recycled file waiting for reuse: garbage after a restart. */
static gboolean
remove_free (const char *dir, const char *name, gpointer data, GError **error)
{
  g_autofree char *path = g_build_filename (dir, name, NULL);
  unlink (path);
  return TRUE;
}

static gboolean
move_to_corrupt (const char *state_dir, const char *name, const char *why, GError **error)
{
  g_autofree char *from = spool_path (state_dir, "queue", name);
  g_autofree char *to = spool_path (state_dir, "corrupt", name);
  g_autofree char *shown = printable_name (name);
  /* Keep an earlier corrupt file of the same name: it is evidence. */
  for (guint n = 1; gm_rename_noreplace (from, to) < 0; n++)
    {
      if (errno != EEXIST || n > 1000)
        return set_errno_error (error, errno, "move to corrupt/:", from);
      g_free (to);
      to = g_strdup_printf ("%s/spool/corrupt/%s.%u", state_dir, name, n);
    }
  gm_log (id_is_valid (name) ? name : NULL, "spool=queue, file=%s, status=moved to corrupt/, "
          "reason=%s", shown, why);
  return TRUE;
}

typedef struct
{
  const char *state_dir;
  GPtrArray *ids;
} RecoverScan;

static gboolean
check_queued (const char *dir, const char *name, gpointer data, GError **error)
{
  RecoverScan *scan = data;
  g_autofree char *path = g_build_filename (dir, name, NULL);
  g_autoptr (GError) local = NULL;
  g_autoptr (GmEnvelope) env = NULL;
  int fd = open_queue_file (path, name, O_RDONLY, &local);
  if (fd >= 0)
    {
      env = load_queue_file (fd, path, name, NULL, NULL, &local);
      close (fd);
    }
  if (env)
    {
      g_ptr_array_add (scan->ids, g_strdup (name));
      return TRUE;
    }
  if (g_error_matches (local, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT))
    return move_to_corrupt (scan->state_dir, name, local->message, error);
  /* A file we cannot read now may be fine: stop rather than lose it. */
  g_propagate_error (error, g_steal_pointer (&local));
  return FALSE;
}

static gboolean
note_existing_id (const char *dir, const char *name, gpointer data, GError **error)
{
  note_id_in_use (name);
  return TRUE;
}

static int
compare_ids (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const char *const *) a, *(const char *const *) b);
}

GPtrArray *
gm_spool_recover (const char *state_dir, GError **error)
{
  g_return_val_if_fail (state_dir != NULL, NULL);
  if (!gm_spool_init (state_dir, error))
    return NULL;

  g_autofree char *incoming = spool_path (state_dir, "incoming", NULL);
  if (!for_each_entry (incoming, remove_incoming, NULL, error))
    return NULL;
  g_autofree char *free_dir = spool_path (state_dir, "free", NULL);
  if (!for_each_entry (free_dir, remove_free, NULL, error))
    return NULL;

  g_autoptr (GPtrArray) ids = g_ptr_array_new_with_free_func (g_free);
  RecoverScan scan = { state_dir, ids };
  g_autofree char *queue = spool_path (state_dir, "queue", NULL);
  if (!for_each_entry (queue, check_queued, &scan, error))
    return NULL;
  g_ptr_array_sort (ids, compare_ids);

  /* New ids must sort after every message still in the spool. */
  for (guint i = 0; i < ids->len; i++)
    note_id_in_use (g_ptr_array_index (ids, i));
  const char *const parked[] = { "deferred", "hold" };
  for (gsize i = 0; i < G_N_ELEMENTS (parked); i++)
    {
      g_autofree char *dir = spool_path (state_dir, parked[i], NULL);
      if (!for_each_entry (dir, note_existing_id, NULL, error))
        return NULL;
    }
  return g_steal_pointer (&ids);
}
