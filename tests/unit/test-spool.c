/* test-spool.c — queue files: round trip, in-place marks, removal, recovery,
 * the defensive parser, queue ids and concurrent durable writes. */
#include "config.h"
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <glib/gstdio.h>

static const char header[] = "Received: from client.example (client.example [192.0.2.1])\n"
                             "\tby mx.example with ESMTP id X; Wed, 25 Nov 2026 12:00:00 +0000\n";

/* ---- Fixtures ---- */

typedef struct
{
  char *state_dir;
} Spool;

static void
remove_tree (const char *path)
{
  GDir *dir = g_dir_open (path, 0, NULL);
  if (dir)
    {
      const char *name;
      while ((name = g_dir_read_name (dir)))
        {
          g_autofree char *child = g_build_filename (path, name, NULL);
          remove_tree (child);
        }
      g_dir_close (dir);
    }
  g_remove (path);
}

static void
spool_setup (Spool *s)
{
  g_autoptr (GError) error = NULL;
  s->state_dir = g_dir_make_tmp ("test-spool-XXXXXX", &error);
  g_assert_no_error (error);
  g_assert_true (gm_spool_init (s->state_dir, &error));
  g_assert_no_error (error);
}

static void
spool_teardown (Spool *s)
{
  remove_tree (s->state_dir);
  g_free (s->state_dir);
}

static char *
path_in (const Spool *s, const char *subdir, const char *name)
{
  return g_build_filename (s->state_dir, "spool", subdir, name, NULL);
}

static guint
count_entries (const Spool *s, const char *subdir)
{
  g_autofree char *path = path_in (s, subdir, NULL);
  GDir *dir = g_dir_open (path, 0, NULL);
  g_assert_nonnull (dir);
  guint n = 0;
  while (g_dir_read_name (dir))
    n++;
  g_dir_close (dir);
  return n;
}

static GmEnvelope *
make_envelope (guint n_rcpts)
{
  GmEnvelope *env = gm_envelope_new ();
  env->id = gm_spool_new_id ();
  env->arrival = 1795608000;
  env->client = g_strdup ("client.example [192.0.2.1]");
  env->helo = g_strdup ("client.example");
  env->protocol = g_strdup ("ESMTP");
  env->sender = g_strdup ("alice@client.example");
  for (guint i = 0; i < n_rcpts; i++)
    {
      g_autofree char *address = g_strdup_printf ("user%u@mx.example", i);
      g_autofree char *destination = g_strdup_printf ("/var/mail/user %u%s", i,
                                                      i % 2 ? "" : "/Maildir");
      gm_envelope_add_rcpt (env, address, i % 2 ? GM_TRANSPORT_MBOX : GM_TRANSPORT_MAILDIR,
                            destination);
    }
  return env;
}

static void
write_or_die (const Spool *s, GmEnvelope *env, const char *body, gsize body_len)
{
  g_autoptr (GError) error = NULL;
  gboolean ok = gm_spool_write (s->state_dir, env, header, strlen (header), body, body_len, &error);
  g_assert_no_error (error);
  g_assert_true (ok);
}

static void
assert_envelopes_equal (const GmEnvelope *a, const GmEnvelope *b)
{
  g_assert_cmpstr (a->id, ==, b->id);
  g_assert_cmpint (a->arrival, ==, b->arrival);
  g_assert_cmpstr (a->client, ==, b->client);
  g_assert_cmpstr (a->helo, ==, b->helo);
  g_assert_cmpstr (a->protocol, ==, b->protocol);
  g_assert_cmpstr (a->sender, ==, b->sender);
  g_assert_cmpuint (a->rcpts->len, ==, b->rcpts->len);
  for (guint i = 0; i < a->rcpts->len; i++)
    {
      const GmSpoolRcpt *ra = g_ptr_array_index (a->rcpts, i);
      const GmSpoolRcpt *rb = g_ptr_array_index (b->rcpts, i);
      g_assert_cmpstr (ra->address, ==, rb->address);
      g_assert_cmpint (ra->transport, ==, rb->transport);
      g_assert_cmpstr (ra->destination, ==, rb->destination);
      g_assert_cmpint (ra->status, ==, rb->status);
      g_assert_cmpint (ra->status_offset, ==, rb->status_offset);
      g_assert_cmpint (ra->append_start, ==, rb->append_start);
      g_assert_cmpint (ra->append_offset, ==, rb->append_offset);
    }
}

/* ---- Round trip ---- */

static void
test_round_trip (void)
{
  Spool s;
  spool_setup (&s);
  /* NUL, 8-bit bytes, a line that looks like a record, no final LF. */
  static const char body[] = "Subject: caf\xc3\xa9\n\nbinary \0 and \xff\xfe\nM 12\nR x\nend";
  const gsize body_len = sizeof body - 1;
  g_autoptr (GmEnvelope) env = make_envelope (3);
  write_or_die (&s, env, body, body_len);
  g_assert_cmpuint (count_entries (&s, "incoming"), ==, 0);

  g_autoptr (GError) error = NULL;
  g_autoptr (GmQueueFile) qf = gm_queue_file_open (s.state_dir, env->id, &error);
  g_assert_no_error (error);
  g_assert_nonnull (qf);
  assert_envelopes_equal (env, qf->env);
  g_assert_cmpuint (qf->message_len, ==, strlen (header) + body_len);
  g_assert_cmpmem (qf->message, strlen (header), header, strlen (header));
  g_assert_cmpmem (qf->message + strlen (header), body_len, body, body_len);
  g_assert_cmpint (qf->message[qf->message_len], ==, '\0');

  /* The offsets point at the status bytes of the file on disk. */
  g_autofree char *contents = NULL;
  gsize len;
  g_assert_true (g_file_get_contents (qf->path, &contents, &len, NULL));
  for (guint i = 0; i < env->rcpts->len; i++)
    {
      const GmSpoolRcpt *rcpt = g_ptr_array_index (env->rcpts, i);
      g_assert_cmpint (rcpt->status_offset, <, len);
      g_assert_cmpint (contents[rcpt->status_offset - 1], ==, 'R');
      g_assert_cmpint (contents[rcpt->status_offset], ==, 'P');
    }
  g_assert_true (g_str_has_prefix (contents, "GUILLEMOT-QUEUE 1\nI "));
  spool_teardown (&s);
}

static void
test_null_sender_empty_message (void)
{
  Spool s;
  spool_setup (&s);
  g_autoptr (GmEnvelope) env = gm_envelope_new ();
  env->id = gm_spool_new_id ();
  env->sender = g_strdup ("");
  gm_envelope_add_rcpt (env, "postmaster@mx.example", GM_TRANSPORT_MBOX, "/var/mail/postmaster");
  g_autoptr (GError) error = NULL;
  g_assert_true (gm_spool_write (s.state_dir, env, NULL, 0, NULL, 0, &error));
  g_assert_no_error (error);
  g_autoptr (GmQueueFile) qf = gm_queue_file_open (s.state_dir, env->id, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (qf->env->sender, ==, "");
  g_assert_cmpstr (qf->env->client, ==, "");
  g_assert_cmpuint (qf->message_len, ==, 0);
  spool_teardown (&s);
}

/* ---- Marks and removal ---- */

static void
test_marks_survive_reopen (void)
{
  Spool s;
  spool_setup (&s);
  g_autoptr (GmEnvelope) env = make_envelope (3);
  write_or_die (&s, env, "body\n", 5);

  g_autoptr (GError) error = NULL;
  GmQueueFile *qf = gm_queue_file_open (s.state_dir, env->id, &error);
  g_assert_no_error (error);
  g_assert_true (gm_queue_file_mark (qf, 0, GM_RCPT_DELIVERED, &error));
  g_assert_true (gm_queue_file_mark (qf, 2, GM_RCPT_FAILED, &error));
  g_assert_true (gm_queue_file_sync (qf, &error));
  g_assert_no_error (error);
  gm_queue_file_close (qf);

  qf = gm_queue_file_open (s.state_dir, env->id, &error);
  g_assert_no_error (error);
  const GmRcptStatus expected[] = { GM_RCPT_DELIVERED, GM_RCPT_PENDING, GM_RCPT_FAILED };
  for (guint i = 0; i < G_N_ELEMENTS (expected); i++)
    g_assert_cmpint (((GmSpoolRcpt *) g_ptr_array_index (qf->env->rcpts, i))->status, ==,
                     expected[i]);
  g_assert_cmpmem (qf->message, qf->message_len - 5, header, strlen (header));
  gm_queue_file_close (qf);
  spool_teardown (&s);
}

static void
test_remove (void)
{
  Spool s;
  spool_setup (&s);
  g_autoptr (GmEnvelope) env = make_envelope (1);
  write_or_die (&s, env, "body\n", 5);
  g_autoptr (GError) error = NULL;
  GmQueueFile *qf = gm_queue_file_open (s.state_dir, env->id, &error);
  g_assert_no_error (error);
  g_assert_true (gm_queue_file_remove (qf, &error));
  g_assert_no_error (error);
  gm_queue_file_close (qf);
  g_assert_cmpuint (count_entries (&s, "queue"), ==, 0);

  qf = gm_queue_file_open (s.state_dir, env->id, &error);
  g_assert_null (qf);
  g_assert_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_IO);
  spool_teardown (&s);
}

/* ---- The mbox journal (O records) ---- */

/* mbox recipients get an O record of dashes; Maildir ones none. */
static void
test_append_record_written (void)
{
  Spool s;
  spool_setup (&s);
  g_autoptr (GmEnvelope) env = make_envelope (2);      /* 0: Maildir, 1: mbox */
  write_or_die (&s, env, "body\n", 5);
  g_autoptr (GError) error = NULL;
  g_autoptr (GmQueueFile) qf = gm_queue_file_open (s.state_dir, env->id, &error);
  g_assert_no_error (error);
  assert_envelopes_equal (env, qf->env);
  const GmSpoolRcpt *maildir = g_ptr_array_index (qf->env->rcpts, 0);
  const GmSpoolRcpt *mbox = g_ptr_array_index (qf->env->rcpts, 1);
  g_assert_cmpint (maildir->append_offset, ==, 0);
  g_assert_cmpint (maildir->append_start, ==, -1);
  g_assert_cmpint (mbox->append_start, ==, -1);
  g_autofree char *contents = NULL;
  g_assert_true (g_file_get_contents (qf->path, &contents, NULL, NULL));
  g_assert_true (strstr (contents, "\nT mbox /var/mail/user 1\nO ----------------\nM ") != NULL);
  g_assert_cmpmem (contents + mbox->append_offset - 2, 19, "O ----------------\n", 19);
  spool_teardown (&s);
}

/* gm_queue_file_note_append rewrites the O record in place, durably. */
static void
test_append_noted_in_place (void)
{
  Spool s;
  spool_setup (&s);
  g_autoptr (GmEnvelope) env = make_envelope (4);
  write_or_die (&s, env, "body\n", 5);
  g_autoptr (GError) error = NULL;
  GmQueueFile *qf = gm_queue_file_open (s.state_dir, env->id, &error);
  g_assert_no_error (error);
  g_autofree char *before = NULL;
  gsize before_len;
  g_assert_true (g_file_get_contents (qf->path, &before, &before_len, NULL));
  g_assert_true (gm_queue_file_note_append (qf, 3, G_GINT64_CONSTANT (0x7123456789ABCDEF), &error));
  g_assert_true (gm_queue_file_note_append (qf, 1, 0, &error));
  g_assert_true (gm_queue_file_note_append (qf, 1, 4242, &error));
  g_assert_no_error (error);
  g_assert_cmpint (((GmSpoolRcpt *) g_ptr_array_index (qf->env->rcpts, 1))->append_start, ==, 4242);
  gm_queue_file_close (qf);

  qf = gm_queue_file_open (s.state_dir, env->id, &error);
  g_assert_no_error (error);
  const gint64 expected[] = { -1, 4242, -1, G_GINT64_CONSTANT (0x7123456789ABCDEF) };
  for (guint i = 0; i < G_N_ELEMENTS (expected); i++)
    g_assert_cmpint (((GmSpoolRcpt *) g_ptr_array_index (qf->env->rcpts, i))->append_start, ==,
                     expected[i]);
  g_autofree char *after = NULL;
  gsize after_len;
  g_assert_true (g_file_get_contents (qf->path, &after, &after_len, NULL));
  g_assert_cmpuint (after_len, ==, before_len);
  g_assert_true (strstr (after, "\nO 0000000000001092\n") != NULL);
  g_assert_true (strstr (after, "\nO 7123456789ABCDEF\n") != NULL);
  /* Only the O values changed. */
  gsize changed = 0;
  for (gsize i = 0; i < after_len; i++)
    changed += before[i] != after[i];
  g_assert_cmpuint (changed, <=, 32);
  gm_queue_file_close (qf);
  spool_teardown (&s);
}

/* O records: where they may be, and what a torn one reads as. */
static void
test_parse_append_records (void)
{
  static const struct { const char *value; gint64 start; } cases[] = {
    { "0000000000000000", 0 },
    { "00000000000ABCDE", 0xABCDE },
    { "----------------", -1 },
    { "000000000000----", -1 },     /* torn: the new value half written */
    { "--------00001234", -1 },
    { "8000000000000000", -1 },     /* past G_MAXINT64 */
  };
  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    {
      g_autofree char *file = g_strdup_printf ("GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \n"
                                               "RP a@x\nT mbox /m\nO %s\nM 0\n", cases[i].value);
      g_autoptr (GError) error = NULL;
      g_autoptr (GmEnvelope) env = gm_spool_parse (file, strlen (file), NULL, &error);
      g_assert_no_error (error);
      const GmSpoolRcpt *r = g_ptr_array_index (env->rcpts, 0);
      g_assert_cmpint (r->append_start, ==, cases[i].start);
      g_assert_cmpint (r->append_offset, ==, strstr (file, "\nO ") - file + 3);
    }
  /* A file from before O records: no journal for its mbox recipient. */
  static const char old[] = "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nRP a@x\nT mbox /m\nM 0\n";
  g_autoptr (GmEnvelope) old_env = gm_spool_parse (old, strlen (old), NULL, NULL);
  g_assert_nonnull (old_env);
  const GmSpoolRcpt *old_rcpt = g_ptr_array_index (old_env->rcpts, 0);
  g_assert_cmpint (old_rcpt->append_offset, ==, 0);
  g_assert_cmpint (old_rcpt->append_start, ==, -1);

  static const char *const bad[] = {
    "RP a@x\nT maildir /m\nO ----------------\n",
    "RP a@x\nT mbox /m\nO ----------------\nO ----------------\n",
    "O ----------------\nRP a@x\nT mbox /m\n",
    "RP a@x\nT mbox /m\nO ---------------\n",
    "RP a@x\nT mbox /m\nO -----------------\n",
    "RP a@x\nT mbox /m\nO 00000000000abcde\n",
    "RP a@x\nT mbox /m\nO 0000000000000 00\n",
    "RP a@x\nT mbox /m\nO\n",
  };
  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autofree char *file = g_strdup_printf ("GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \n%sM 0\n",
                                               bad[i]);
      g_autoptr (GError) error = NULL;
      g_autoptr (GmEnvelope) env = gm_spool_parse (file, strlen (file), NULL, &error);
      if (env)
        g_error ("case %" G_GSIZE_FORMAT " parsed: %s", i, file);
      g_assert_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT);
    }
}

/* ---- Write failures leave nothing behind ---- */

static void
test_write_refuses_bad_envelope (void)
{
  Spool s;
  spool_setup (&s);
  g_autoptr (GmEnvelope) env = make_envelope (1);
  g_free (env->helo);
  env->helo = g_strdup ("evil\nR injected");
  g_autoptr (GError) error = NULL;
  g_assert_false (gm_spool_write (s.state_dir, env, header, strlen (header), "x\n", 2, &error));
  g_assert_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_IO);
  g_clear_error (&error);

  g_autoptr (GmEnvelope) relative = make_envelope (0);
  gm_envelope_add_rcpt (relative, "bob@mx.example", GM_TRANSPORT_MAILDIR, "mail/bob");
  g_assert_false (gm_spool_write (s.state_dir, relative, header, strlen (header), "x\n", 2, &error));
  g_assert_nonnull (error);
  g_assert_cmpuint (count_entries (&s, "incoming"), ==, 0);
  g_assert_cmpuint (count_entries (&s, "queue"), ==, 0);
  spool_teardown (&s);
}

static void
test_write_never_replaces (void)
{
  Spool s;
  spool_setup (&s);
  g_autoptr (GmEnvelope) env = make_envelope (1);
  write_or_die (&s, env, "first\n", 6);
  g_autoptr (GError) error = NULL;
  g_assert_false (gm_spool_write (s.state_dir, env, header, strlen (header), "second\n", 7,
                                  &error));
  g_assert_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_IO);
  g_clear_error (&error);
  g_autoptr (GmQueueFile) qf = gm_queue_file_open (s.state_dir, env->id, &error);
  g_assert_no_error (error);
  g_assert_true (g_str_has_suffix (qf->message, "first\n"));
  g_assert_cmpuint (count_entries (&s, "incoming"), ==, 0);
  spool_teardown (&s);
}

/* ---- The parser on damaged input ---- */

static char *
valid_file (gsize *len)
{
  g_autoptr (GmEnvelope) env = make_envelope (2);
  g_autoptr (GString) file = g_string_new (NULL);
  g_string_append_printf (file, "GUILLEMOT-QUEUE 1\nI %s\nA 1795608000\nC c\nH h\nP ESMTP\nS s@x\n"
                          "RP a@x\nT maildir /m/a\nRD b@x\nT mbox /m/b\nO 00000000000012AB\nM 6\nhello\n",
                          env->id);
  *len = file->len;
  return g_string_free (g_steal_pointer (&file), FALSE);
}

static void
test_parse_valid (void)
{
  gsize len, offset;
  g_autofree char *data = valid_file (&len);
  g_autoptr (GError) error = NULL;
  g_autoptr (GmEnvelope) env = gm_spool_parse (data, len, &offset, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (env->rcpts->len, ==, 2);
  const GmSpoolRcpt *b = g_ptr_array_index (env->rcpts, 1);
  g_assert_cmpint (b->status, ==, GM_RCPT_DELIVERED);
  g_assert_cmpint (b->transport, ==, GM_TRANSPORT_MBOX);
  g_assert_cmpstr (b->destination, ==, "/m/b");
  g_assert_cmpint (data[b->status_offset], ==, 'D');
  g_assert_cmpint (b->append_start, ==, 0x12AB);
  g_assert_cmpmem (data + offset, len - offset, "hello\n", 6);
}

static void
test_parse_every_truncation (void)
{
  gsize len;
  g_autofree char *data = valid_file (&len);
  for (gsize n = 0; n < len; n++)
    {
      /* A copy of exactly N bytes, so that valgrind sees any overread. */
      g_autofree char *prefix = g_memdup2 (data, n);
      g_autoptr (GError) error = NULL;
      g_autoptr (GmEnvelope) env = gm_spool_parse (prefix, n, NULL, &error);
      g_assert_null (env);
      g_assert_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT);
    }
}

/* Every byte of the records replaced by a few nasty values: corrupt or fine,
 * never a crash. */
static void
test_parse_mutations (void)
{
  gsize len, offset;
  g_autofree char *data = valid_file (&len);
  g_autoptr (GmEnvelope) valid = gm_spool_parse (data, len, &offset, NULL);
  g_assert_nonnull (valid);
  static const char replacements[] = { '\0', '\n', ' ', 'R', 'M', '9', '\xff', 'T' };
  for (gsize i = 0; i < offset; i++)
    for (gsize r = 0; r < G_N_ELEMENTS (replacements); r++)
      {
        g_autofree char *copy = g_memdup2 (data, len);
        copy[i] = replacements[r];
        g_autoptr (GError) error = NULL;
        g_autoptr (GmEnvelope) env = gm_spool_parse (copy, len, NULL, &error);
        if (!env)
          g_assert_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT);
      }
}

static void
test_parse_rejects (void)
{
  static const char *const bad[] = {
    "",
    "GUILLEMOT-QUEUE 2\n",
    "GUILLEMOT-QUEUE 1\nI ../../etc\nA 1\nC \nH \nP \nS \nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA -1\nC \nH \nP \nS \nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 99999999999999999999\nC \nH \nP \nS \nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nM 18446744073709551616\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nM 18446744073709551615\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nM 5\nabc",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nM 1\nabc",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nRX a@x\nT mbox /m\nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nRP a@x\nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nRP a@x\nT smtp /m\nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nRP a@x\nT maildir m\nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nRP a@x\nT maildir\nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nRP \nT maildir /m\nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nR\nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nH \nC \nP \nS \nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nX extension\nM 0\n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nM \n",
    "GUILLEMOT-QUEUE 1\nI A\nA 1\nC \nH \nP \nS \nM +0\n",
  };
  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++)
    {
      g_autoptr (GError) error = NULL;
      g_autoptr (GmEnvelope) env = gm_spool_parse (bad[i], strlen (bad[i]), NULL, &error);
      if (env)
        g_error ("case %" G_GSIZE_FORMAT " parsed: %s", i, bad[i]);
      g_assert_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT);
    }
  /* A NUL inside a record. */
  static const char nul[] = "GUILLEMOT-QUEUE 1\nI A\nA 1\nC a\0b\nH \nP \nS \nM 0\n";
  g_autoptr (GError) error = NULL;
  g_assert_null (gm_spool_parse (nul, sizeof nul - 1, NULL, &error));
  g_assert_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT);
}

/* ---- Recovery ---- */

static void
put_file (const Spool *s, const char *subdir, const char *name, const char *data, gsize len)
{
  g_autofree char *path = path_in (s, subdir, name);
  g_assert_true (g_file_set_contents (path, data, len, NULL));
}

static void
test_recover (void)
{
  Spool s;
  spool_setup (&s);
  g_autoptr (GPtrArray) written = g_ptr_array_new_with_free_func (g_free);
  for (int i = 0; i < 3; i++)
    {
      g_autoptr (GmEnvelope) env = make_envelope (2);
      write_or_die (&s, env, "body\n", 5);
      g_ptr_array_add (written, g_strdup (env->id));
    }

  /* A truncated file: a valid one that lost its last bytes. */
  g_autoptr (GmEnvelope) truncated = make_envelope (1);
  write_or_die (&s, truncated, "body that will be cut\n", 22);
  g_autofree char *truncated_path = path_in (&s, "queue", truncated->id);
  g_assert_cmpint (truncate (truncated_path, 100), ==, 0);
  /* Garbage with a valid name, a file with a name no queue id has, and a
   * valid file whose I record does not match its name. */
  put_file (&s, "queue", "00000000000001", "\xff\xfe garbage\n", 11);
  put_file (&s, "queue", "not-an-id.tmp", "x", 1);
  g_autofree char *copy_from = path_in (&s, "queue", g_ptr_array_index (written, 0));
  g_autofree char *contents = NULL;
  gsize len;
  g_assert_true (g_file_get_contents (copy_from, &contents, &len, NULL));
  put_file (&s, "queue", "00000000000002", contents, len);
  /* Leftovers of writes that were never acknowledged. */
  put_file (&s, "incoming", "0000000000000A", "half a message", 14);
  put_file (&s, "incoming", "0000000000000B", "", 0);

  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) ids = gm_spool_recover (s.state_dir, &error);
  g_assert_no_error (error);
  g_assert_nonnull (ids);
  g_assert_cmpuint (ids->len, ==, 3);
  for (guint i = 0; i < ids->len; i++)
    g_assert_cmpstr (g_ptr_array_index (ids, i), ==, g_ptr_array_index (written, i));
  g_assert_cmpuint (count_entries (&s, "incoming"), ==, 0);
  g_assert_cmpuint (count_entries (&s, "queue"), ==, 3);
  g_assert_cmpuint (count_entries (&s, "corrupt"), ==, 4);
  g_autofree char *moved = path_in (&s, "corrupt", truncated->id);
  g_assert_true (g_file_test (moved, G_FILE_TEST_IS_REGULAR));

  /* A second corrupt file of the same name keeps the first. */
  put_file (&s, "queue", "00000000000001", "again", 5);
  g_autoptr (GPtrArray) again = gm_spool_recover (s.state_dir, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (again->len, ==, 3);
  g_assert_cmpuint (count_entries (&s, "corrupt"), ==, 5);
  spool_teardown (&s);
}

/* Recovery reads the first 64 KiB of each file and the rest only when the
 * records run past it (no fuzz input is that long): a valid file with long
 * records stays, one cut inside them goes to corrupt/. */
static void
test_recover_long_records (void)
{
  Spool s;
  spool_setup (&s);
  g_autoptr (GmEnvelope) env = make_envelope (2);
  g_free (env->helo);
  env->helo = g_strnfill (70000, 'h');
  write_or_die (&s, env, "body\n", 5);
  g_autoptr (GmEnvelope) cut = make_envelope (2);
  g_free (cut->helo);
  cut->helo = g_strnfill (70000, 'h');
  write_or_die (&s, cut, "body\n", 5);
  g_autofree char *cut_path = path_in (&s, "queue", cut->id);
  g_assert_cmpint (truncate (cut_path, 66000), ==, 0);

  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) ids = gm_spool_recover (s.state_dir, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (ids->len, ==, 1);
  g_assert_cmpstr (g_ptr_array_index (ids, 0), ==, env->id);
  g_assert_cmpuint (count_entries (&s, "corrupt"), ==, 1);
  g_autoptr (GmQueueFile) qf = gm_queue_file_open (s.state_dir, env->id, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (qf->env->helo, ==, env->helo);
  spool_teardown (&s);
}

/* Recovery moves later ids past the ones on disk, even ones made before the
 * clock stepped back (here: two seconds ahead of it). */
static void
test_recover_advances_ids (void)
{
  Spool s;
  spool_setup (&s);
  g_autoptr (GmEnvelope) env = make_envelope (1);
  g_free (env->id);
  env->id = g_strdup_printf ("%014" G_GINT64_MODIFIER "X",
                             (guint64) (g_get_real_time () + 2 * G_USEC_PER_SEC));
  write_or_die (&s, env, "x\n", 2);
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) ids = gm_spool_recover (s.state_dir, &error);
  g_assert_no_error (error);
  g_autofree char *next = gm_spool_new_id ();
  g_assert_cmpstr (next, >, env->id);
  spool_teardown (&s);
}

/* ---- Queue ids ---- */

#define ID_THREADS 8
#define IDS_PER_THREAD 5000

static gpointer
make_ids (gpointer data)
{
  char **ids = data;
  for (int i = 0; i < IDS_PER_THREAD; i++)
    ids[i] = gm_spool_new_id ();
  return NULL;
}

static void
test_ids_unique_increasing (void)
{
  char **ids = g_new0 (char *, ID_THREADS * IDS_PER_THREAD);
  GThread *threads[ID_THREADS];
  for (int t = 0; t < ID_THREADS; t++)
    threads[t] = g_thread_new ("ids", make_ids, ids + t * IDS_PER_THREAD);
  for (int t = 0; t < ID_THREADS; t++)
    g_thread_join (threads[t]);

  g_autoptr (GHashTable) seen = g_hash_table_new (g_str_hash, g_str_equal);
  gint64 now = g_get_real_time ();
  for (int t = 0; t < ID_THREADS; t++)
    for (int i = 0; i < IDS_PER_THREAD; i++)
      {
        const char *id = ids[t * IDS_PER_THREAD + i];
        g_assert_cmpuint (strlen (id), ==, 14);
        for (const char *p = id; *p; p++)
          g_assert_true (g_ascii_isdigit (*p) || (*p >= 'A' && *p <= 'F'));
        if (i > 0)
          g_assert_cmpstr (ids[t * IDS_PER_THREAD + i - 1], <, id);
        g_assert_true (g_hash_table_add (seen, (gpointer) id));
      }
  /* Microseconds since the epoch: close to now (ids may run ahead a little). */
  gint64 last = (gint64) g_ascii_strtoull (ids[IDS_PER_THREAD - 1], NULL, 16);
  g_assert_cmpint (ABS (last - now), <, 60 * G_USEC_PER_SEC);
  for (int i = 0; i < ID_THREADS * IDS_PER_THREAD; i++)
    g_free (ids[i]);
  g_free (ids);
}

/* ---- Concurrent durable writes ---- */

#define WRITE_THREADS 8
#define WRITES_PER_THREAD 40

typedef struct
{
  const Spool *spool;
  char *ids[WRITES_PER_THREAD];
  guint thread;
} Writer;

static char *
body_for (const char *id)
{
  return g_strdup_printf ("Subject: %s\n\n%s\n", id, id);
}

static gpointer
write_messages (gpointer data)
{
  Writer *w = data;
  for (int i = 0; i < WRITES_PER_THREAD; i++)
    {
      g_autoptr (GmEnvelope) env = make_envelope (1 + (w->thread + i) % 3);
      g_autofree char *body = body_for (env->id);
      g_autoptr (GError) error = NULL;
      if (!gm_spool_write (w->spool->state_dir, env, header, strlen (header), body, strlen (body),
                           &error))
        g_error ("write: %s", error->message);
      w->ids[i] = g_strdup (env->id);
    }
  return NULL;
}

static void
test_concurrent_writes (void)
{
  Spool s;
  spool_setup (&s);
  Writer writers[WRITE_THREADS];
  GThread *threads[WRITE_THREADS];
  for (guint t = 0; t < WRITE_THREADS; t++)
    {
      writers[t] = (Writer) { .spool = &s, .thread = t };
      threads[t] = g_thread_new ("writer", write_messages, &writers[t]);
    }
  for (guint t = 0; t < WRITE_THREADS; t++)
    g_thread_join (threads[t]);

  g_assert_cmpuint (count_entries (&s, "queue"), ==, WRITE_THREADS * WRITES_PER_THREAD);
  g_assert_cmpuint (count_entries (&s, "incoming"), ==, 0);
  for (guint t = 0; t < WRITE_THREADS; t++)
    for (guint i = 0; i < WRITES_PER_THREAD; i++)
      {
        const char *id = writers[t].ids[i];
        g_autoptr (GError) error = NULL;
        g_autoptr (GmQueueFile) qf = gm_queue_file_open (s.state_dir, id, &error);
        g_assert_no_error (error);
        g_autofree char *body = body_for (id);
        g_assert_cmpuint (qf->env->rcpts->len, ==, 1 + (t + i) % 3);
        g_assert_true (g_str_has_suffix (qf->message, body));
        g_free (writers[t].ids[i]);
      }
  spool_teardown (&s);
}

/* ---- No space ---- */

/* Needs a small file system, e.g. a 1 MB tmpfs: GUILLEMOT_TEST_FULL_DIR=/mnt/tiny. */
static void
test_no_space (void)
{
  const char *small = g_getenv ("GUILLEMOT_TEST_FULL_DIR");
  if (!small)
    {
      g_test_skip ("set GUILLEMOT_TEST_FULL_DIR to a directory on a small file system");
      return;
    }
  g_autofree char *state_dir = g_build_filename (small, "guillemot-test-no-space", NULL);
  Spool s = { g_steal_pointer (&state_dir) };
  g_autoptr (GError) error = NULL;
  g_assert_true (gm_spool_init (s.state_dir, &error));
  gsize big = 64 * 1024 * 1024;
  g_autofree char *body = g_malloc0 (big);
  g_autoptr (GmEnvelope) env = make_envelope (1);
  g_assert_false (gm_spool_write (s.state_dir, env, header, strlen (header), body, big, &error));
  g_assert_error (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_NO_SPACE);
  g_assert_cmpuint (count_entries (&s, "incoming"), ==, 0);
  g_assert_cmpuint (count_entries (&s, "queue"), ==, 0);
  spool_teardown (&s);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/spool/round-trip", test_round_trip);
  g_test_add_func ("/spool/null-sender-empty-message", test_null_sender_empty_message);
  g_test_add_func ("/spool/marks-survive-reopen", test_marks_survive_reopen);
  g_test_add_func ("/spool/remove", test_remove);
  g_test_add_func ("/spool/append/record-written", test_append_record_written);
  g_test_add_func ("/spool/append/noted-in-place", test_append_noted_in_place);
  g_test_add_func ("/spool/parse/append-records", test_parse_append_records);
  g_test_add_func ("/spool/write-refuses-bad-envelope", test_write_refuses_bad_envelope);
  g_test_add_func ("/spool/write-never-replaces", test_write_never_replaces);
  g_test_add_func ("/spool/parse/valid", test_parse_valid);
  g_test_add_func ("/spool/parse/every-truncation", test_parse_every_truncation);
  g_test_add_func ("/spool/parse/mutations", test_parse_mutations);
  g_test_add_func ("/spool/parse/rejects", test_parse_rejects);
  g_test_add_func ("/spool/recover", test_recover);
  g_test_add_func ("/spool/recover-long-records", test_recover_long_records);
  g_test_add_func ("/spool/recover-advances-ids", test_recover_advances_ids);
  g_test_add_func ("/spool/ids-unique-increasing", test_ids_unique_increasing);
  g_test_add_func ("/spool/concurrent-writes", test_concurrent_writes);
  g_test_add_func ("/spool/no-space", test_no_space);
  return g_test_run ();
}
