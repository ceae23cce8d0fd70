/* fuzz-session.c — the SMTP state machine (src/smtp-session.c) fed an
 * arbitrary byte stream, cut at arbitrary points, with rules answering at
 * random and the spool failing at random.
 *
 * Input: four option bytes, then what the client sends.
 *   byte 0: bit 0 bare-line-endings reject, bit 1 the small limits
 *           (fuzz_config_setup), bit 2 the spool fails now and then
 *   byte 1: the stages that have rules (bit 1 << GmStage)
 *   bytes 2-3: seed of the choices: where the stream is cut, each rule
 *           verdict and envelope change, each spool result
 *
 * The conversation runs twice: the whole stream in one gm_session_feed, then
 * cut into pieces of 1 to 600 bytes, some fed while a rule or the spool is
 * still busy. Both runs must give the same replies, log lines, rule requests
 * and spooled messages: where TCP cuts the stream must never matter (but
 * for text pipelined behind a refused DATA, dropped only when it came in
 * the same read).
 * Checks at every step: replies are well-formed (fuzz_check_replies); a
 * spooled message has no CR, ends with LF and fits the size limit; its
 * Received: lines are at most 998 octets (RFC 5322 §2.1.1) without CR; its
 * envelope has a recipient, can be written as a queue file, and reads back
 * the same (gm_spool_format, gm_spool_parse). */
#include "config.h"

#include "fuzz.h"
#include "smtp-reply.h"
#include "smtp-session.h"
#include "spool.h"

typedef struct
{
  FuzzRng choices;              /* verdicts, envelope changes, spool results */
  gboolean spool_failures;
  GString *replies;
  GString *events;              /* rule requests, spooled messages, close */
  guint stages;                 /* that have rules */
} Run;

static GString *log_lines;

static void
log_to_run (const char *line)
{
  g_string_append (log_lines, line);
  g_string_append_c (log_lines, '\n');
}

static void
check_envelope_round_trip (GmEnvelope *env, const GString *header, const GString *body)
{
  g_autoptr (GError) error = NULL;
  gsize message_len = header->len + body->len;
  GString *file = gm_spool_format (env, message_len, &error);
  FUZZ_CHECK (file != NULL, "the spool would refuse the envelope: %s", error->message);
  gsize records_len = file->len;
  g_string_append_len (file, header->str, header->len);
  g_string_append_len (file, body->str, body->len);
  gsize offset = 0;
  g_autoptr (GmEnvelope) back = gm_spool_parse (file->str, file->len, &offset, &error);
  FUZZ_CHECK (back != NULL, "queue file does not parse: %s", error->message);
  FUZZ_CHECK (offset == records_len, "message offset %zu, records %zu", offset, records_len);
  FUZZ_CHECK (strcmp (back->id, env->id) == 0 && back->arrival == env->arrival
              && strcmp (back->client, env->client) == 0 && strcmp (back->helo, env->helo) == 0
              && strcmp (back->protocol, env->protocol) == 0
              && strcmp (back->sender, env->sender) == 0, "envelope changed: sender <%s> -> <%s>",
              env->sender, back->sender);
  FUZZ_CHECK (back->rcpts->len == env->rcpts->len, "recipients changed");
  for (guint i = 0; i < env->rcpts->len; i++)
    {
      const GmSpoolRcpt *a = g_ptr_array_index (env->rcpts, i);
      const GmSpoolRcpt *b = g_ptr_array_index (back->rcpts, i);
      FUZZ_CHECK (strcmp (a->address, b->address) == 0 && a->transport == b->transport
                  && g_strcmp0 (a->destination, b->destination) == 0 && a->status == b->status
                  && a->status_offset == b->status_offset, "recipient <%s> changed", a->address);
    }
  g_string_free (file, TRUE);
}

static void
check_message (Run *r, GmSession *s, GmEnvelope *env, const GString *header, const GString *body)
{
  FUZZ_CHECK (memchr (body->str, '\r', body->len) == NULL, "CR in a spooled body");
  FUZZ_CHECK (body->len == 0 || body->str[body->len - 1] == '\n', "body without final LF");
  FUZZ_CHECK (gm_session_size (s) <= gm_config.max_message_size, "message over the limit");
  FUZZ_CHECK (body->len <= gm_session_size (s) + 1, "body of %zu bytes, %" G_GUINT64_FORMAT
              " received", body->len, gm_session_size (s));
  FUZZ_CHECK (g_str_has_prefix (header->str, "Received: ")
              && g_str_has_suffix (header->str, "\n"), "header: %s", header->str);
  FUZZ_CHECK (memchr (header->str, '\r', header->len) == NULL, "CR in the Received: header");
  for (const char *p = header->str; *p;)
    {
      gsize len = strcspn (p, "\n");
      FUZZ_CHECK (len <= 998, "Received: line of %zu octets (RFC 5322: 998)", len);
      p += len + (p[len] != '\0');
    }
  /* Only data rules may remove every recipient (documented: "nrcpt=0"). */
  FUZZ_CHECK (env->rcpts->len > 0 || (r->stages & (1u << GM_STAGE_DATA)),
              "message without recipients");
  check_envelope_round_trip (env, header, body);
}

static void
record_message (Run *r, GmSession *s)
{
  GmEnvelope *env;
  const GString *header, *body;
  gm_session_message (s, &env, &header, &body);
  check_message (r, s, env, header, body);
  g_string_append_printf (r->events, "spool from=<%s> proto=%s helo=%s quarantine=%s size=%"
                          G_GUINT64_FORMAT "\n", env->sender, env->protocol, env->helo,
                          env->quarantine ? env->quarantine : "-", gm_session_size (s));
  for (guint i = 0; i < env->rcpts->len; i++)
    {
      const GmSpoolRcpt *rcpt = g_ptr_array_index (env->rcpts, i);
      g_string_append_printf (r->events, "  to=<%s> %d %s\n", rcpt->address, rcpt->transport,
                              rcpt->destination);
    }
  /* The Received: header ends with the date: leave it out. */
  const char *date = strrchr (header->str, ';');
  g_string_append_len (r->events, header->str, date ? date - header->str : (gssize) header->len);
  g_string_append (r->events, "\n--- body\n");
  g_string_append_len (r->events, body->str, body->len);
}

/* What the rules do when the session asks: change the envelope, then answer. */
static GmSessionAction
run_rules (Run *r, GmSession *s)
{
  const char *arg = NULL, *reason = NULL;
  GmStage stage = gm_session_policy_stage (s, &arg);
  g_string_append_printf (r->events, "rules %s %s\n", gm_stage_name (stage), arg ? arg : "-");
  guint32 x = fuzz_rng_next (&r->choices);
  const GmEnvelope *env = gm_session_envelope (s);
  const char *first = env && env->rcpts->len
    ? ((GmSpoolRcpt *) g_ptr_array_index (env->rcpts, 0))->address : "nobody@example.test";
  switch (x % 8)
    {
    case 0:
      gm_session_set_sender (s, arg && stage == GM_STAGE_RCPT ? arg : "changed@example.test",
                             &reason);
      break;
    case 1:
      if (stage == GM_STAGE_RCPT || stage == GM_STAGE_DATA)
        gm_session_add_recipient (s, arg && stage == GM_STAGE_RCPT ? arg : "added@example.test",
                                  &reason);
      break;
    case 2:
      gm_session_remove_recipient (s, first);
      break;
    case 3:
      gm_session_set_mailbox (s, first, GM_TRANSPORT_MBOX, "/var/mail/~a", &reason);
      break;
    case 4:
      gm_session_set_mailbox (s, first, GM_TRANSPORT_MAILDIR, "mail/~a~~/Maildir", &reason);
      break;
    default:
      break;
    }
  /* Whatever the rules changed, the facts stay readable. */
  (void) gm_session_helo (s);
  (void) gm_session_esmtp (s);
  (void) gm_session_conn (s);
  if (stage == GM_STAGE_DATA)
    {
      GmEnvelope *data_env;
      const GString *header, *body;
      gm_session_message (s, &data_env, &header, &body);
      FUZZ_CHECK (strcmp (data_env->id, arg) == 0, "data rules get the queue id");
    }

  GmVerdict v = { 0 };
  switch ((x >> 8) % 7)
    {
    case 0: case 1: v.kind = GM_VERDICT_NEXT; break;
    case 2: v.kind = GM_VERDICT_ACCEPT; break;
    case 3:
      FUZZ_CHECK (gm_verdict_set_reply (&v, GM_VERDICT_REJECT, 554, "5.7.1 Go away", NULL), "reject");
      break;
    case 4:
      FUZZ_CHECK (gm_verdict_set_reply (&v, GM_VERDICT_DEFER, 451, "Later", NULL), "defer");
      break;
    case 5: v.kind = GM_VERDICT_DISCARD; break;
    case 6:
      v.kind = GM_VERDICT_QUARANTINE;
      v.text = g_strdup ("suspect");
      break;
    }
  GmSessionAction action = gm_session_policy_done (s, &v);
  gm_verdict_clear (&v);
  return action;
}

static GmSessionAction
spool (Run *r, GmSession *s)
{
  record_message (r, s);
  g_autoptr (GError) error = NULL;
  guint32 x = fuzz_rng_next (&r->choices);
  if (r->spool_failures && x % 3 != 0)
    g_set_error (&error, GM_SPOOL_ERROR, x % 3 == 1 ? GM_SPOOL_ERROR_IO : GM_SPOOL_ERROR_NO_SPACE,
                 "simulated");
  g_string_append_printf (r->events, "spooled %s\n", error ? "failed" : "ok");
  return gm_session_spooled (s, error);
}

/* Answer rules and spool requests until the session wants input or closes.
 * With CUTS, sometimes feed the next piece first, while the request waits. */
static GmSessionAction
settle (Run *r, GmSession *s, GmSessionAction action, FuzzRng *cuts, const uint8_t **data,
        const uint8_t *end)
{
  for (;;)
    {
      g_string_append_len (r->replies, gm_session_output (s)->str, gm_session_output (s)->len);
      fuzz_check_replies (gm_session_output (s));
      g_string_truncate (gm_session_output (s), 0);
      if (action == GM_SESSION_WANT_INPUT || action == GM_SESSION_CLOSE)
        return action;
      if (cuts && *data < end && fuzz_rng_next (cuts) % 4 == 0)
        {
          /* The server stops reading meanwhile, but bytes already read are fed. */
          gsize n = 1 + fuzz_rng_next (cuts) % 32;
          n = MIN (n, (gsize) (end - *data));
          FUZZ_CHECK (gm_session_feed (s, (const char *) *data, n) == GM_SESSION_WANT_INPUT,
                      "feed while busy");
          *data += n;
        }
      action = action == GM_SESSION_POLICY ? run_rules (r, s) : spool (r, s);
    }
}

static void
run_session (Run *r, const uint8_t *data, const uint8_t *end, guint32 seed, gboolean cut)
{
  FuzzRng cuts;
  fuzz_rng_init (&r->choices, seed);
  fuzz_rng_init (&cuts, seed ^ 0x5a5a);
  GmConnInfo conn = { "2001:db8::1", 40000, "192.0.2.25", 25 };
  GmSession *s = gm_session_new (&conn);
  gm_session_set_policy (s, r->stages);
  GmSessionAction action = settle (r, s, gm_session_greet (s), NULL, NULL, NULL);
  while (action != GM_SESSION_CLOSE && data < end)
    {
      gsize n = end - data;
      if (cut)
        {
          guint32 x = fuzz_rng_next (&cuts);
          n = MIN (n, x % 8 == 0 ? 1 + x / 8 % 600 : 1 + x / 8 % 16);
        }
      action = gm_session_feed (s, (const char *) data, n);
      data += n;
      action = settle (r, s, action, cut ? &cuts : NULL, &data, end);
    }
  if (action == GM_SESSION_CLOSE && data < end)
    {
      /* Bytes that arrive after the close are never answered. */
      FUZZ_CHECK (gm_session_feed (s, (const char *) data, end - data) == GM_SESSION_CLOSE
                  && gm_session_output (s)->len == 0, "input after the close was answered");
    }
  if (action != GM_SESSION_CLOSE)
    {
      /* The client stopped talking: the server times it out. */
      FUZZ_CHECK (gm_session_abort (s, GM_REPLY_TIMEOUT) == GM_SESSION_CLOSE, "abort");
      settle (r, s, GM_SESSION_CLOSE, NULL, NULL, NULL);
    }
  g_autofree char *summary = gm_session_summary (s);
  g_string_append_printf (r->events, "close %s\n", summary);
  gm_session_free (s);
}

/* Queue ids (14 upper-case hexadecimal digits) differ from run to run. */
static void
normalise_ids (GString *text)
{
  GString *out = g_string_sized_new (text->len);
  const char *p = text->str, *end = text->str + text->len;
  while (p < end)
    {
      gsize n = 0;
      while (p + n < end && (g_ascii_isdigit (p[n]) || (p[n] >= 'A' && p[n] <= 'F')))
        n++;
      if (n == 14)
        g_string_append (out, "QUEUEID");
      else
        g_string_append_len (out, p, MAX (n, 1));
      p += MAX (n, 1);
    }
  g_string_assign (text, "");
  g_string_append_len (text, out->str, out->len);
  g_string_free (out, TRUE);
}

static void
run_init (Run *r, guint stages, gboolean spool_failures)
{
  r->stages = stages;
  r->spool_failures = spool_failures;
  r->replies = g_string_new (NULL);
  r->events = g_string_new (NULL);
}

static void
run_finish (Run *r, GString *logs)
{
  normalise_ids (r->replies);
  normalise_ids (r->events);
  normalise_ids (logs);
}

static void
run_clear (Run *r)
{
  g_string_free (r->replies, TRUE);
  g_string_free (r->events, TRUE);
}

static void
check_same (const char *what, const GString *whole, const GString *cut)
{
  if (g_string_equal (whole, cut))
    return;
  gsize i = 0;
  while (i < whole->len && i < cut->len && whole->str[i] == cut->str[i])
    i++;
  gsize from = i > 80 ? i - 80 : 0;
  FUZZ_CHECK (FALSE, "%s differ when the stream is cut, at byte %zu:\n"
              "whole: ...%.160s\ncut:   ...%.160s", what, i, whole->str + from, cut->str + from);
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  log_lines = g_string_new (NULL);
  gm_log_set_writer (log_to_run);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 4)
    return 0;
  fuzz_config_setup (data[0] & 1, data[0] & 2);
  guint stages = data[1] & ((1u << GM_N_STAGES) - 1);
  guint32 seed = data[2] | (guint32) data[3] << 8;
  const uint8_t *stream = data + 4, *end = data + size;

  Run whole, cut;
  run_init (&whole, stages, data[0] & 4);
  g_string_truncate (log_lines, 0);
  run_session (&whole, stream, end, seed, FALSE);
  g_autoptr (GString) whole_log = g_string_new_len (log_lines->str, log_lines->len);
  run_finish (&whole, whole_log);

  run_init (&cut, stages, data[0] & 4);
  g_string_truncate (log_lines, 0);
  run_session (&cut, stream, end, seed, TRUE);
  run_finish (&cut, log_lines);

  /* One thing may depend on the cuts, on purpose: text sent behind a refused
   * DATA is dropped with 421 when it came in the same read, and read as
   * commands when it came later (smtp-session.c, refuse_early_message_text). */
  const char *early = "improper pipelining after DATA";
  if (!strstr (whole_log->str, early) && !strstr (log_lines->str, early))
    {
      check_same ("replies", whole.replies, cut.replies);
      check_same ("events", whole.events, cut.events);
      check_same ("log lines", whole_log, log_lines);
    }
  run_clear (&whole);
  run_clear (&cut);
  g_string_truncate (log_lines, 0);
  return 0;
}
