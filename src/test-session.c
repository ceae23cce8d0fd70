/* test-session.c — guillemot test-session: the real state machine and the
 * real rules, driven by a conversation read from a file, with nothing sent
 * over a network, written to the spool or delivered.
 *
 * Output, one line each: ">>> " what the client sent, "<<< " each reply,
 * "*** rule ..." each rule's verdict and time, "*** log: " the log lines,
 * "*** would queue ..." what a real server would have spooled, then, with
 * queued or delivery rules, "*** queued: ..." and "*** delivery to ...":
 * what those rules decided for the message and each recipient. */
#include "config.h"
#include "test-session.h"

#include <errno.h>
#include <libguile.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "policy.h"
#include "settings.h"
#include "smtp-session.h"

static void
print_log (const char *line)
{
  printf ("*** log: %s\n", line);
}

static void
print_replies (GmSession *s)
{
  GString *out = gm_session_output (s);
  const char *p = out->str, *end = out->str + out->len;
  while (p < end)
    {
      const char *crlf = g_strstr_len (p, end - p, "\r\n");
      gsize len = crlf ? (gsize) (crlf - p) : (gsize) (end - p);
      printf ("<<< %.*s\n", (int) len, p);
      p += len + (crlf ? 2 : 0);
    }
  g_string_truncate (out, 0);
}

typedef struct
{
  GMainLoop *loop;
  GmVerdict verdict;
  gboolean done;
} Wait;

static void
rules_answered (gpointer data, const GmVerdict *v)
{
  Wait *w = data;
  w->verdict = *v;
  w->verdict.text = g_strdup (v->text);
  w->done = TRUE;
  g_main_loop_quit (w->loop);
}

static void
print_queued (GmSession *s)
{
  GmEnvelope *env;
  const GString *header, *body;
  gm_session_message (s, &env, &header, &body);
  printf ("*** would queue %s: from=<%s>, size=%zu", env->id, env->sender, body->len);
  for (guint i = 0; i < env->rcpts->len; i++)
    {
      GmSpoolRcpt *r = g_ptr_array_index (env->rcpts, i);
      printf (", to=<%s> %s %s", r->address,
              r->transport == GM_TRANSPORT_MBOX ? "mbox" : "maildir", r->destination);
    }
  if (env->quarantine)
    printf (", quarantine=%s", env->quarantine);
  printf ("\n");
  /* The header section as rules left it: what changed shows. */
  const char *p = body->str, *end = body->str + body->len;
  while (p < end && *p != '\n')
    {
      const char *lf = memchr (p, '\n', end - p);
      gsize len = lf ? (gsize) (lf - p) : (gsize) (end - p);
      printf ("*** | %.*s\n", (int) len, p);
      p += len + 1;
    }
}

/* The rules answered FALSE (they wait for pause, DNS...): run the main loop
 * until they answer, and put their verdict in V. */
static void
wait_for_rules (Wait *w, GmVerdict *v)
{
  w->loop = g_main_loop_new (NULL, FALSE);
  while (!w->done)
    g_main_loop_run (w->loop);
  g_main_loop_unref (w->loop);
  gm_verdict_clear (v);
  *v = w->verdict;
}

static void
print_verdict (const char *what, const GmVerdict *v)
{
  static const char *const kinds[] = { "next", "accept", "reject", "defer", "discard",
                                       "quarantine" };
  if (v->kind == GM_VERDICT_REJECT || v->kind == GM_VERDICT_DEFER)
    printf ("*** %s: %s %u %s %s", what, kinds[v->kind], v->code, v->esc, v->text);
  else
    printf ("*** %s: %s%s%s", what, kinds[v->kind], v->text ? " " : "", v->text ? v->text : "");
}

/* Run STAGE (for recipient RCPT in the delivery stage) and print its
 * verdict; returns whether the message or recipient goes on to delivery. */
static gboolean
print_message_rules (GmPolicyMessage *pm, GmEnvelope *env, GmStage stage, guint rcpt)
{
  Wait w = { NULL, { 0 }, FALSE };
  GmVerdict v = { 0 };
  if (!gm_policy_message_run (pm, stage, rcpt, &v, rules_answered, &w))
    wait_for_rules (&w, &v);
  GmSpoolRcpt *r = stage == GM_STAGE_DELIVERY ? g_ptr_array_index (env->rcpts, rcpt) : NULL;
  g_autofree char *what = r ? g_strdup_printf ("delivery to <%s>", r->address)
    : g_strdup ("queued");
  print_verdict (what, &v);
  gboolean goes_on = v.kind == GM_VERDICT_NEXT || v.kind == GM_VERDICT_ACCEPT;
  if (r && goes_on)
    printf (", %s %s", r->transport == GM_TRANSPORT_MBOX ? "mbox" : "maildir", r->destination);
  printf ("\n");
  gm_verdict_clear (&v);
  return goes_on;
}

/* What the queued rules, then each recipient's delivery rules, decide. */
static void
run_message_rules (GmSession *s)
{
  guint stages = gm_policy_stages ();
  GmEnvelope *env;
  const GString *header, *body;
  gm_session_message (s, &env, &header, &body);
  gboolean queued = stages & (1u << GM_STAGE_QUEUED);
  gboolean delivery = stages & (1u << GM_STAGE_DELIVERY);
  if ((!queued && !delivery) || env->quarantine)
    return;
  g_autoptr (GString) message = g_string_new_len (header->str, header->len);
  g_string_append_len (message, body->str, body->len);
  GmPolicyMessage *pm = gm_policy_message_new (env, message->str, message->len);
  if (!queued || print_message_rules (pm, env, GM_STAGE_QUEUED, 0))
    for (guint i = 0; delivery && i < env->rcpts->len; i++)
      print_message_rules (pm, env, GM_STAGE_DELIVERY, i);
  gm_policy_message_free (pm);
}

/* Carry out what the session asks until it wants input or closes. */
static GmSessionAction
act (GmSession *s, GmSessionAction action)
{
  for (;;)
    {
      print_replies (s);
      if (action == GM_SESSION_POLICY)
        {
          Wait w = { NULL, { 0 }, FALSE };
          GmVerdict v = { 0 };
          if (!gm_policy_run (s, &v, rules_answered, &w))
            wait_for_rules (&w, &v);
          action = gm_session_policy_done (s, &v);
          gm_verdict_clear (&v);
        }
      else if (action == GM_SESSION_SPOOL)
        {
          print_queued (s);
          run_message_rules (s);
          action = gm_session_spooled (s, NULL);
        }
      else
        return action;
    }
}

static gboolean
parse_endpoint (const char *text, GmConnInfo *conn, gboolean client, char **host)
{
  guint16 port = 0;
  g_autoptr (GError) error = NULL;
  if (!strchr (text, ':') || (text[0] != '[' && strchr (text, ':') != strrchr (text, ':')))
    {
      /* A bare address, IPv4 or IPv6. */
      *host = g_strdup (text[0] == '[' ? text + 1 : text);
      char *close = strchr (*host, ']');
      if (close)
        *close = '\0';
      port = client ? 40000 : 25;
    }
  else if (!gm_parse_listen (text, host, &port, &error))
    {
      fprintf (stderr, "guillemot test-session: %s\n", error->message);
      return FALSE;
    }
  if (client)
    conn->client_address = *host, conn->client_port = port;
  else
    conn->local_address = *host, conn->local_port = port;
  return TRUE;
}

int
gm_test_session_run (const char *input, const char *client, const char *local)
{
  g_autofree char *client_host = NULL, *local_host = NULL;
  GmConnInfo conn = { 0 };
  if (!parse_endpoint (client ? client : "192.0.2.1:40000", &conn, TRUE, &client_host)
      || !parse_endpoint (local ? local : "192.0.2.25:25", &conn, FALSE, &local_host))
    return 2;
  FILE *f = input ? fopen (input, "r") : stdin;
  if (!f)
    {
      fprintf (stderr, "guillemot test-session: %s: %s\n", input, g_strerror (errno));
      return 2;
    }
  gm_log_set_writer (print_log);
  scm_call_1 (scm_c_private_ref ("guillemot", "%set-trace!"), SCM_BOOL_T);

  GmSession *s = gm_session_new (&conn);
  gm_session_set_policy (s, gm_policy_session_start (s));
  GmSessionAction action = act (s, gm_session_greet (s));
  char line[65536];
  while (action != GM_SESSION_CLOSE && fgets (line, sizeof line, f))
    {
      line[strcspn (line, "\r\n")] = '\0';
      printf (">>> %s\n", line);
      g_autofree char *bytes = g_strconcat (line, "\r\n", NULL);
      action = act (s, gm_session_feed (s, bytes, strlen (bytes)));
    }
  if (action == GM_SESSION_CLOSE)
    printf ("*** connection closed\n");
  if (f != stdin)
    fclose (f);
  fflush (stdout);
  gm_policy_forget (s);
  gm_session_free (s);
  gm_log_set_writer (NULL);
  return 0;
}
