/* fuzz-queue-file.c — reading queue files (src/spool.c): gm_spool_parse on
 * the bytes, and gm_queue_file_open on the same bytes written to a file.
 *
 * Input: the whole queue file.
 *
 * Checks: a refused file is GM_SPOOL_ERROR_CORRUPT; an accepted one has a
 * valid id, fields without LF or NUL, absolute destinations, status offsets
 * that point at the status bytes of R records, and a message that starts
 * after the records and runs to the end; its envelope formats again
 * (gm_spool_format) into records that parse to the same envelope. The file on
 * disk opens exactly when the bytes parse (named by the id they hold),
 * with the same envelope and message, and a recipient mark written in place
 * reads back. */
#include "config.h"

#include <fcntl.h>
#include <unistd.h>
#include <glib/gstdio.h>

#include "fuzz.h"
#include "spool.h"

static char *state_dir;

static void
remove_state_dir (void)
{
  const char *const subdirs[] = { "incoming", "queue", "deferred", "hold", "corrupt",
                                  "quarantine", "free" };
  for (gsize i = 0; i < G_N_ELEMENTS (subdirs); i++)
    {
      g_autofree char *dir = g_build_filename (state_dir, "spool", subdirs[i], NULL);
      g_rmdir (dir);
    }
  g_autofree char *spool = g_build_filename (state_dir, "spool", NULL);
  g_rmdir (spool);
  g_rmdir (state_dir);
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  g_autoptr (GError) error = NULL;
  gm_log_set_writer (fuzz_log_discard);
  state_dir = g_dir_make_tmp ("fuzz-queue-file-XXXXXX", &error);
  FUZZ_CHECK (state_dir && gm_spool_init (state_dir, &error), "spool: %s", error->message);
  atexit (remove_state_dir);
  return 0;
}

static void
check_fields (const char *data, gsize len, const GmEnvelope *env, gsize offset)
{
  const char *const fields[] = { env->id, env->client, env->helo, env->protocol, env->sender };
  gsize id_len = strlen (env->id);
  FUZZ_CHECK (id_len > 0 && id_len <= 64, "id of %zu bytes", id_len);
  for (const char *p = env->id; *p; p++)
    FUZZ_CHECK (g_ascii_isalnum (*p), "id %s", env->id);
  FUZZ_CHECK (offset <= len, "message offset %zu past %zu bytes", offset, len);
  FUZZ_CHECK (offset > 0 && data[offset - 1] == '\n', "message does not follow a record");
  for (gsize i = 0; i < G_N_ELEMENTS (fields); i++)
    FUZZ_CHECK (fields[i] && !strchr (fields[i], '\n'), "field %zu", i);
  for (guint i = 0; i < env->rcpts->len; i++)
    {
      const GmSpoolRcpt *r = g_ptr_array_index (env->rcpts, i);
      FUZZ_CHECK (r->address[0] && !strchr (r->address, '\n'), "recipient %u", i);
      FUZZ_CHECK (r->transport == GM_TRANSPORT_NONE || (r->destination && r->destination[0] == '/'),
                  "destination of recipient %u", i);
      FUZZ_CHECK (r->status_offset > 0 && (gsize) r->status_offset < offset
                  && data[r->status_offset - 1] == 'R' && (GmRcptStatus) data[r->status_offset] == r->status,
                  "status offset %" G_GOFFSET_FORMAT " of recipient %u", r->status_offset, i);
    }
}

static void
check_same_envelope (const GmEnvelope *a, const GmEnvelope *b, gboolean same_offsets)
{
  FUZZ_CHECK (strcmp (a->id, b->id) == 0 && a->arrival == b->arrival
              && strcmp (a->client, b->client) == 0 && strcmp (a->helo, b->helo) == 0
              && strcmp (a->protocol, b->protocol) == 0 && strcmp (a->sender, b->sender) == 0,
              "envelopes differ");
  FUZZ_CHECK (a->rcpts->len == b->rcpts->len, "recipient counts differ");
  for (guint i = 0; i < a->rcpts->len; i++)
    {
      const GmSpoolRcpt *ra = g_ptr_array_index (a->rcpts, i);
      const GmSpoolRcpt *rb = g_ptr_array_index (b->rcpts, i);
      FUZZ_CHECK (strcmp (ra->address, rb->address) == 0 && ra->transport == rb->transport
                  && g_strcmp0 (ra->destination, rb->destination) == 0 && ra->status == rb->status
                  && (!same_offsets || ra->status_offset == rb->status_offset),
                  "recipient %u differs", i);
    }
}

/* Write the bytes as queue/NAME and open it the way delivery does. */
static void
check_file (const char *data, gsize len, const GmEnvelope *env, gsize offset)
{
  const char *name = env ? env->id : "00000000000000";
  g_autofree char *path = g_build_filename (state_dir, "spool", "queue", name, NULL);
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  FUZZ_CHECK (fd >= 0, "create %s", path);
  FUZZ_CHECK (write (fd, data, len) == (ssize_t) len, "write %s", path);
  close (fd);

  g_autoptr (GError) error = NULL;
  GmQueueFile *qf = gm_queue_file_open (state_dir, name, &error);
  if (!env)
    {
      FUZZ_CHECK (qf == NULL && g_error_matches (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT),
                  "a file that does not parse opens");
      g_unlink (path);
      return;
    }
  FUZZ_CHECK (qf != NULL, "a file that parses does not open: %s", error->message);
  check_same_envelope (env, qf->env, TRUE);
  FUZZ_CHECK (qf->message_len == len - offset && memcmp (qf->message, data + offset,
                                                         qf->message_len) == 0
              && qf->message[qf->message_len] == '\0', "messages differ");
  if (env->rcpts->len > 0)
    {
      guint last = env->rcpts->len - 1;
      FUZZ_CHECK (gm_queue_file_mark (qf, last, GM_RCPT_FAILED, &error), "mark: %s",
                  error->message);
      gm_queue_file_close (qf);
      qf = gm_queue_file_open (state_dir, name, &error);
      FUZZ_CHECK (qf != NULL, "a marked file does not open: %s", error->message);
      const GmSpoolRcpt *r = g_ptr_array_index (qf->env->rcpts, last);
      FUZZ_CHECK (r->status == GM_RCPT_FAILED, "the mark did not stick");
    }
  gm_queue_file_close (qf);
  g_unlink (path);
}

/* Records written from the parsed envelope parse back to it. */
static void
check_format (const GmEnvelope *env, const char *message, gsize message_len)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GmEnvelope) copy = gm_envelope_new ();
  copy->id = g_strdup (env->id);
  copy->arrival = env->arrival;
  copy->client = g_strdup (env->client);
  copy->helo = g_strdup (env->helo);
  copy->protocol = g_strdup (env->protocol);
  copy->sender = g_strdup (env->sender);
  for (guint i = 0; i < env->rcpts->len; i++)
    {
      const GmSpoolRcpt *r = g_ptr_array_index (env->rcpts, i);
      gm_envelope_add_rcpt (copy, r->address, r->transport, r->destination);
      ((GmSpoolRcpt *) g_ptr_array_index (copy->rcpts, i))->status = r->status;
    }
  GString *file = gm_spool_format (copy, message_len, &error);
  FUZZ_CHECK (file != NULL, "a parsed envelope cannot be written: %s", error->message);
  gsize records_len = file->len;
  g_string_append_len (file, message, message_len);
  gsize offset;
  g_autoptr (GmEnvelope) back = gm_spool_parse (file->str, file->len, &offset, &error);
  FUZZ_CHECK (back != NULL, "written records do not parse: %s", error->message);
  FUZZ_CHECK (offset == records_len, "records end at %zu, parsed to %zu", records_len, offset);
  check_same_envelope (env, back, FALSE);
  check_same_envelope (copy, back, TRUE);
  g_string_free (file, TRUE);
}

int
LLVMFuzzerTestOneInput (const uint8_t *bytes, size_t size)
{
  const char *data = (const char *) bytes;
  g_autoptr (GError) error = NULL;
  gsize offset = 0;
  g_autoptr (GmEnvelope) env = gm_spool_parse (data, size, &offset, &error);
  if (!env)
    FUZZ_CHECK (g_error_matches (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT),
                "refused without GM_SPOOL_ERROR_CORRUPT");
  else
    {
      check_fields (data, size, env, offset);
      check_format (env, data + offset, size - offset);
    }
  check_file (data, size, env, offset);
  return 0;
}
