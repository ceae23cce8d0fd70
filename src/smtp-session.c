/* smtp-session.c — the SMTP server conversation as a state machine, no I/O.
 *
 * RFC 5321 (commands, §4.1; sequencing, §4.1.4; DATA and dot-stuffing,
 * §4.1.1.4 and §4.5.2; limits, §4.5.3), RFC 2920 (PIPELINING), RFC 3030
 * (CHUNKING/BDAT), RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8),
 * RFC 2034 (ENHANCEDSTATUSCODES).
 *
 * Only CRLF.CRLF ends a DATA message: a "." line reached through a bare CR or
 * LF never does, so no SMTP smuggling can split one message into two. */
#include "config.h"
#include "smtp-session.h"

#include <string.h>

#include "envelope-edit.h"
#include "log.h"
#include "settings.h"
#include "smtp-parse.h"
#include "smtp-reply.h"

/* A partial DATA line longer than this is consumed without waiting for its end. */
#define DATA_PARTIAL_LINE 8192

typedef enum
{
  IN_COMMAND,
  IN_DATA,
  IN_BDAT,
  IN_SPOOLING,                  /* waiting for gm_session_spooled() */
  IN_POLICY,                    /* waiting for gm_session_policy_done() */
  IN_CLOSED,
} InputMode;

typedef enum
{
  CMD_EHLO, CMD_HELO, CMD_MAIL, CMD_RCPT, CMD_DATA, CMD_BDAT, CMD_RSET,
  CMD_NOOP, CMD_QUIT, CMD_VRFY, CMD_HELP, CMD_EXPN, CMD_ETRN, CMD_TURN,
  CMD_UNKNOWN, N_COMMANDS
} CommandId;

struct GmSession
{
  GmConnInfo conn;              /* strings owned */
  GString *in;
  gsize in_pos;
  GString *out;
  InputMode mode;
  gboolean discarding_line;     /* an over-long command line is being skipped */
  gboolean stalled;             /* commands wait until the output drains */

  char *helo;
  gboolean esmtp;
  guint errors;
  guint counts[N_COMMANDS];
  guint64 requests;             /* command lines read, whole, good or bad */

  /* The transaction: env != NULL once MAIL was accepted. */
  GmEnvelope *env;
  gboolean smtputf8;
  gboolean rcpt_refused;        /* some RCPT was refused: "no valid recipients" */
  gboolean bdat_used;
  GString *header;              /* Received: */
  GString *body;                /* LF line ends */
  guint64 size;                 /* bytes received for this message */
  gboolean too_big;
  gboolean bare_seen;

  /* DATA line state. */
  gboolean line_start;
  gboolean prev_crlf;

  /* Policy: the stages that have rules, and the request outstanding. */
  guint policy_stages;          /* bit (1 << GmStage) */
  GmStage stage;
  char *stage_arg;              /* HELO name, sender or recipient, as given to the rules */
  gboolean stage_extended;      /* HELO stage: EHLO */
  gboolean stage_smtputf8;      /* MAIL stage: SMTPUTF8 given */
  GmPath stage_path;            /* RCPT stage */
  GmEnvelope *saved_env;        /* RCPT stage: the envelope before the rules changed it */
  gboolean discard;             /* a rule said discard: accept, then drop */
  gboolean discard_session;     /* ... at connect or helo: every message of the session */
  char *quarantine;             /* a rule said quarantine NAME */
  char *quarantine_session;     /* ... at connect or helo */

  /* BDAT chunk state. */
  guint64 chunk_left;
  gboolean chunk_last;
  gboolean pending_cr;
  int chunk_error;              /* GmReplyKind to answer when the chunk ends, or -1 */
};

static void reset_transaction (GmSession *s);

GmSession *
gm_session_new (const GmConnInfo *conn)
{
  GmSession *s = g_new0 (GmSession, 1);
  s->conn.client_address = g_strdup (conn->client_address);
  s->conn.client_port = conn->client_port;
  s->conn.local_address = g_strdup (conn->local_address);
  s->conn.local_port = conn->local_port;
  s->in = g_string_sized_new (512);
  s->out = g_string_sized_new (256);
  s->header = g_string_new (NULL);
  s->body = g_string_new (NULL);
  s->mode = IN_COMMAND;
  s->chunk_error = -1;
  return s;
}

void
gm_session_free (GmSession *s)
{
  if (!s)
    return;
  g_free ((char *) s->conn.client_address);
  g_free ((char *) s->conn.local_address);
  g_string_free (s->in, TRUE);
  g_string_free (s->out, TRUE);
  g_string_free (s->header, TRUE);
  g_string_free (s->body, TRUE);
  g_free (s->helo);
  g_free (s->stage_arg);
  g_free (s->quarantine);
  g_free (s->quarantine_session);
  gm_path_clear (&s->stage_path);
  if (s->saved_env)
    gm_envelope_free (s->saved_env);
  if (s->env)
    gm_envelope_free (s->env);
  g_free (s);
}

GString *
gm_session_output (GmSession *s)
{
  return s->out;
}

gboolean
gm_session_stalled (GmSession *s)
{
  return s->stalled && s->mode == IN_COMMAND && s->in->len > 0;
}

const GmConnInfo *
gm_session_conn (GmSession *s)
{
  return &s->conn;
}

const char *
gm_session_helo (GmSession *s)
{
  /* The helo rules see the name being given, not the previous one. */
  if (s->mode == IN_POLICY && s->stage == GM_STAGE_HELO)
    return s->stage_arg;
  return s->helo;
}

gboolean
gm_session_esmtp (GmSession *s)
{
  if (s->mode == IN_POLICY && s->stage == GM_STAGE_HELO)
    return s->stage_extended;
  return s->esmtp;
}

const GmEnvelope *
gm_session_envelope (GmSession *s)
{
  return s->env;
}

guint64
gm_session_size (GmSession *s)
{
  return s->size;
}

GString *
gm_session_body (GmSession *s)
{
  return s->body;
}

gboolean
gm_session_reading_data (GmSession *s)
{
  return s->mode == IN_DATA || s->mode == IN_BDAT;
}

gboolean
gm_session_in_transaction (GmSession *s)
{
  return s->env != NULL;
}

guint64
gm_session_requests (GmSession *s)
{
  return s->requests;
}

/* ---- Replies ---------------------------------------------------------- */

/* Every reply goes through here: counts client errors and ends the session
 * when there are too many. */
static void replied (GmSession *s, gsize start, guint code, gboolean client_error);

/* A 452 4.5.3 (too many recipients) is no error of the client's: RFC 5321
 * §4.5.3.1.10 makes it the normal way to say "send the rest in another
 * transaction", and a client that pipelined more RCPTs than max-recipients
 * must not lose the accepted ones to the error limit (Postfix's
 * smtpd_recipient_overshoot_limit exists for the same reason). */
static void
reply (GmSession *s, GmReplyKind kind, const char *text)
{
  gsize start = s->out->len;
  guint code = gm_reply (s->out, kind, text);
  replied (s, start, code, code >= 500);
}

/* A reply decided by a policy rule. Its rejections count as errors too. */
static void
reply_verdict (GmSession *s, const GmVerdict *v)
{
  gsize start = s->out->len;
  gm_reply_with_code (s->out, v->code, v->esc, v->text);
  replied (s, start, v->code, v->code >= 500);
}

/* After any reply: log refusals, close on 421, count client errors. */
static void
replied (GmSession *s, gsize start, guint code, gboolean client_error)
{
  if (code >= 400)
    {
      /* Postfix-style "reject:" line with the reply as sent (first line). */
      const char *line = s->out->str + start;
      gsize len = strcspn (line, "\r");
      gm_log (NULL, "reject: client=[%s]:%u, reply=%.*s", s->conn.client_address,
              s->conn.client_port, (int) len, line);
    }
  if (code == 421)
    {
      s->mode = IN_CLOSED;
      return;
    }
  if (client_error)
    {
      s->errors++;
      if (s->errors >= gm_config.max_errors)
        {
          gm_log (NULL, "too many errors from [%s]:%u", s->conn.client_address, s->conn.client_port);
          g_autofree char *t = g_strdup_printf ("%s Error: too many errors", gm_config.hostname);
          gm_reply (s->out, GM_REPLY_TOO_MANY_ERRORS, t);
          s->mode = IN_CLOSED;
        }
    }
}

static void G_GNUC_PRINTF (3, 4)
replyf (GmSession *s, GmReplyKind kind, const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  g_autofree char *text = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  reply (s, kind, text);
}

void
gm_session_set_policy (GmSession *s, guint stage_mask)
{
  s->policy_stages = stage_mask;
}

/* Raise a policy request for STAGE when it has rules: the session then waits
 * for gm_session_policy_done(). ARG is what the rules get (copied). */
static gboolean
ask_policy (GmSession *s, GmStage stage, const char *arg)
{
  if (!(s->policy_stages & (1u << stage)))
    return FALSE;
  s->stage = stage;
  g_free (s->stage_arg);
  s->stage_arg = g_strdup (arg);
  s->mode = IN_POLICY;
  return TRUE;
}

GmStage
gm_session_policy_stage (GmSession *s, const char **arg)
{
  g_return_val_if_fail (s->mode == IN_POLICY, GM_STAGE_CONNECT);
  *arg = s->stage_arg;
  return s->stage;
}

static void
proceed_greeting (GmSession *s)
{
  replyf (s, GM_REPLY_GREETING, "%s ESMTP Guillemot", gm_config.hostname);
}

GmSessionAction
gm_session_greet (GmSession *s)
{
  if (ask_policy (s, GM_STAGE_CONNECT, s->conn.client_address))
    return GM_SESSION_POLICY;
  proceed_greeting (s);
  return GM_SESSION_WANT_INPUT;
}

GmSessionAction
gm_session_abort (GmSession *s, guint reply_kind)
{
  const char *what = reply_kind == GM_REPLY_TIMEOUT ? "Error: timeout exceeded"
    : reply_kind == GM_REPLY_TOO_MANY_CONNECTIONS ? "Error: too many connections"
    : "Service shutting down";
  if (s->mode != IN_CLOSED)
    replyf (s, reply_kind, "%s %s", gm_config.hostname, what);
  s->mode = IN_CLOSED;
  return GM_SESSION_CLOSE;
}

/* ---- Transaction ------------------------------------------------------ */

static void
reset_transaction (GmSession *s)
{
  g_clear_pointer (&s->env, gm_envelope_free);
  s->smtputf8 = FALSE;
  s->rcpt_refused = FALSE;
  s->bdat_used = FALSE;
  s->size = 0;
  s->too_big = FALSE;
  s->bare_seen = FALSE;
  s->pending_cr = FALSE;
  s->chunk_error = -1;
  s->discard = s->discard_session;
  g_free (s->quarantine);
  s->quarantine = g_strdup (s->quarantine_session);
  g_string_truncate (s->header, 0);
  /* Keep the body buffer for the next message unless it grew large. */
  if (s->body->allocated_len > 1024 * 1024)
    {
      g_string_free (s->body, TRUE);
      s->body = g_string_new (NULL);
    }
  else
    g_string_truncate (s->body, 0);
}

static const char *
protocol_name (GmSession *s)
{
  if (!s->esmtp)
    return "SMTP";
  return s->smtputf8 ? "UTF8SMTP" : "ESMTP";
}

static void
build_received (GmSession *s)
{
  GmEnvelope *env = s->env;
  g_autoptr (GDateTime) now = g_date_time_new_from_unix_utc (env->arrival);
  g_autofree char *date = g_date_time_format (now, "%a, %d %b %Y %H:%M:%S +0000");
  gboolean v6 = strchr (s->conn.client_address, ':') != NULL;
  g_string_printf (s->header, "Received: from %s ([%s%s])\n\tby %s (Guillemot) with %s id %s",
                   s->helo, v6 ? "IPv6:" : "", s->conn.client_address, gm_config.hostname,
                   protocol_name (s), env->id);
  if (env->rcpts->len == 1)
    {
      GmSpoolRcpt *r = g_ptr_array_index (env->rcpts, 0);
      g_string_append_printf (s->header, "\n\tfor <%s>", r->address);
    }
  g_string_append_printf (s->header, "; %s\n", date);
}

static GmSessionAction proceed_data (GmSession *s);

/* Whether the header section of BODY (LF line ends) is over max-header-size,
 * counted as received (CRLF line ends), like max-message-size. The section
 * is the lines from the start up to the empty line, or up to the first line
 * that is neither a header field ("name:") nor a continuation (starts with a
 * space or a tab), as Postfix's cleanup reads it. The scan stops at the
 * limit. */
static gboolean
header_section_too_big (const GString *body)
{
  gsize limit = gm_config.max_header_size, pos = 0, received = 0;
  while (pos < body->len)
    {
      const char *line = body->str + pos;
      gsize rest = body->len - pos;
      const char *lf = memchr (line, '\n', rest);
      gsize len = lf ? (gsize) (lf - line) : rest;
      if (len == 0)
        break;                  /* the empty line: the body follows */
      if (line[0] != ' ' && line[0] != '\t')
        {
          gsize n = 0;
          while (n < len && line[n] > ' ' && line[n] < 127 && line[n] != ':')
            n++;
          if (n == 0 || n == len || line[n] != ':')
            break;              /* not a header field: the body starts here */
        }
      pos += len + (lf ? 1 : 0);
      received += len + 2;
      if (received > limit)
        return TRUE;
    }
  return FALSE;
}

/* The message is complete: answer an error or hand it to the spool. */
static GmSessionAction
finish_message (GmSession *s)
{
  s->mode = IN_COMMAND;
  if (s->too_big)
    {
      reply (s, GM_REPLY_TOO_BIG, NULL);
      reset_transaction (s);
      return GM_SESSION_WANT_INPUT;
    }
  if (s->bare_seen && gm_config.bare_line_endings == GM_BARE_REJECT)
    {
      reply (s, GM_REPLY_BARE_LINE_ENDING, NULL);
      reset_transaction (s);
      return GM_SESSION_WANT_INPUT;
    }
  if (header_section_too_big (s->body))
    {
      reply (s, GM_REPLY_HEADER_TOO_BIG, NULL);
      reset_transaction (s);
      return GM_SESSION_WANT_INPUT;
    }
  if (s->body->len > 0 && s->body->str[s->body->len - 1] != '\n')
    g_string_append_c (s->body, '\n');
  s->env->id = gm_spool_new_id ();
  s->env->arrival = g_get_real_time () / G_USEC_PER_SEC;
  s->env->protocol = g_strdup (protocol_name (s));
  if (ask_policy (s, GM_STAGE_DATA, s->env->id))
    return GM_SESSION_POLICY;
  return proceed_data (s);
}

/* After the data rules: spool, or drop when a rule said discard. */
static GmSessionAction
proceed_data (GmSession *s)
{
  if (s->discard)
    {
      replyf (s, GM_REPLY_QUEUED, "Ok: queued as %s", s->env->id);
      gm_log (s->env->id, "discarded by policy: client=[%s]:%u, from=<%s>, size=%" G_GUINT64_FORMAT
              ", nrcpt=%u", s->conn.client_address, s->conn.client_port, s->env->sender, s->size,
              s->env->rcpts->len);
      reset_transaction (s);
      s->mode = IN_COMMAND;
      return GM_SESSION_WANT_INPUT;
    }
  build_received (s);
  s->env->quarantine = g_strdup (s->quarantine);
  s->mode = IN_SPOOLING;
  return GM_SESSION_SPOOL;
}

void
gm_session_message (GmSession *s, GmEnvelope **env, const GString **header, const GString **body)
{
  g_return_if_fail (s->mode == IN_SPOOLING || (s->mode == IN_POLICY && s->stage == GM_STAGE_DATA));
  *env = s->env;
  *header = s->header;
  *body = s->body;
}

/* ---- Commands --------------------------------------------------------- */

static gboolean
valid_helo_name (const char *arg)
{
  const char *reason;
  gsize len = strlen (arg);
  if (gm_valid_domain (arg, len, &reason))
    return TRUE;
  /* Accept the underscores that some clients put in their host names, in
   * at most a domain's octets: the name goes into the Received: line, which
   * must stay under RFC 5322's 998 (found by fuzz-session). */
  if (!*arg || len > GM_MAX_DOMAIN)
    return FALSE;
  for (const char *p = arg; *p; p++)
    if (!g_ascii_isalnum (*p) && *p != '-' && *p != '.' && *p != '_')
      return FALSE;
  return TRUE;
}

static void proceed_helo (GmSession *s, const char *name, gboolean extended);

static void
cmd_helo (GmSession *s, char *arg, gboolean extended)
{
  g_strchomp (arg);             /* some clients add trailing spaces */
  if (!*arg || !valid_helo_name (arg))
    {
      replyf (s, GM_REPLY_SYNTAX, "Syntax: %s hostname", extended ? "EHLO" : "HELO");
      return;
    }
  s->stage_extended = extended;
  if (ask_policy (s, GM_STAGE_HELO, arg))
    return;
  proceed_helo (s, arg, extended);
}

static void
proceed_helo (GmSession *s, const char *name, gboolean extended)
{
  reset_transaction (s);
  char *copy = g_strdup (name);
  g_free (s->helo);
  s->helo = copy;
  s->esmtp = extended;
  if (!extended)
    {
      replyf (s, GM_REPLY_EHLO, "%s", gm_config.hostname);
      return;
    }
  g_autofree char *text = g_strdup_printf ("%s\nPIPELINING\nSIZE %" G_GUINT64_FORMAT
                                           "\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING",
                                           gm_config.hostname, gm_config.max_message_size);
  reply (s, GM_REPLY_EHLO, text);
}

static gboolean
has_prefix_ci (const char *s, const char *prefix)
{
  return g_ascii_strncasecmp (s, prefix, strlen (prefix)) == 0;
}

/* The path and parameters of MAIL or RCPT; on failure, answer and return FALSE. */
static gboolean
parse_command_path (GmSession *s, char *arg, GmPathFlags flags, GmPath *path, GmParam *params,
                    guint *n_params)
{
  const char *reason;
  gboolean params_failed;
  if (gm_parse_path_and_params (arg, flags, path, params, n_params, &reason, &params_failed))
    return TRUE;
  if (params_failed)
    replyf (s, GM_REPLY_SYNTAX, "Bad parameter syntax: %s", reason);
  else if (flags & GM_PATH_SENDER)
    replyf (s, GM_REPLY_BAD_SENDER, "Bad sender address syntax: %s", reason);
  else
    replyf (s, GM_REPLY_BAD_RECIPIENT, "Bad recipient address syntax: %s", reason);
  return FALSE;
}

static void proceed_mail (GmSession *s, const char *sender, gboolean smtputf8);

static void
cmd_mail (GmSession *s, char *arg)
{
  if (!s->helo)
    {
      reply (s, GM_REPLY_BAD_SEQUENCE, "Error: send HELO/EHLO first");
      return;
    }
  if (s->env)
    {
      reply (s, GM_REPLY_BAD_SEQUENCE, "Error: nested MAIL command");
      return;
    }
  if (!has_prefix_ci (arg, "FROM:"))
    {
      reply (s, GM_REPLY_SYNTAX, "Syntax: MAIL FROM:<address>");
      return;
    }
  GmPath path;
  GmParam params[GM_MAX_PARAMS];
  guint n_params;
  if (!parse_command_path (s, arg + 5, GM_PATH_SENDER, &path, params, &n_params))
    return;
  gboolean smtputf8 = FALSE;
  for (guint i = 0; i < n_params; i++)
    {
      const char *key = params[i].keyword, *value = params[i].value;
      if (!s->esmtp)
        {
          replyf (s, GM_REPLY_BAD_PARAMETER, "Parameter %s needs EHLO", key);
          goto out;
        }
      if (g_ascii_strcasecmp (key, "SIZE") == 0)
        {
          guint64 size;
          if (!value || !gm_parse_decimal (value, &size))
            {
              reply (s, GM_REPLY_SYNTAX, "Syntax: SIZE=number");
              goto out;
            }
          if (size > gm_config.max_message_size)
            {
              reply (s, GM_REPLY_TOO_BIG, NULL);
              goto out;
            }
        }
      else if (g_ascii_strcasecmp (key, "BODY") == 0)
        {
          if (!value || (g_ascii_strcasecmp (value, "7BIT") != 0
                         && g_ascii_strcasecmp (value, "8BITMIME") != 0))
            {
              reply (s, GM_REPLY_SYNTAX, "Syntax: BODY=7BIT or BODY=8BITMIME");
              goto out;
            }
        }
      else if (g_ascii_strcasecmp (key, "SMTPUTF8") == 0 && !value)
        smtputf8 = TRUE;
      else
        {
          replyf (s, GM_REPLY_BAD_PARAMETER, "Unsupported parameter: %s", key);
          goto out;
        }
    }
  if (path.utf8 && !smtputf8)
    {
      reply (s, GM_REPLY_NON_ASCII_ADDRESS, NULL);
      goto out;
    }
  {
    g_autofree char *sender = gm_path_to_string (&path);
    s->stage_smtputf8 = smtputf8;
    if (!ask_policy (s, GM_STAGE_MAIL, sender))
      proceed_mail (s, sender, smtputf8);
  }
out:
  gm_path_clear (&path);
}

static void
proceed_mail (GmSession *s, const char *sender, gboolean smtputf8)
{
  s->env = gm_envelope_new ();
  s->env->client = g_strdup (s->conn.client_address);
  s->env->helo = g_strdup (s->helo);
  s->env->sender = g_strdup (sender);
  s->smtputf8 = smtputf8;
  reply (s, GM_REPLY_SENDER_OK, "Ok");
}

/* After the RCPT checks and rules: routing, then the recipient is added.
 * TRUE when it was accepted. */
static gboolean
proceed_rcpt (GmSession *s, const GmPath *path)
{
  g_autofree char *address = gm_path_to_string (path);
  if (path->domain && !gm_is_local_domain (path->domain))
    {
      replyf (s, GM_REPLY_RELAY_DENIED, "<%s>: Relay access denied", address);
      s->rcpt_refused = TRUE;
      return FALSE;
    }
  g_autofree char *mailbox = gm_mailbox_name (path->local);
  if (!mailbox)
    {
      replyf (s, GM_REPLY_NO_SUCH_MAILBOX,
              "<%s>: Recipient address rejected: local part not usable as a mailbox name", address);
      s->rcpt_refused = TRUE;
      return FALSE;
    }
  if (gm_envelope_find_recipient (s->env, address, NULL))
    {
      /* One copy per recipient, as Postfix does: accept, do not add again. */
      reply (s, GM_REPLY_RCPT_OK, "Ok (duplicate recipient)");
      return TRUE;
    }
  g_autofree char *destination = gm_config_local_path (mailbox);
  gm_envelope_add_rcpt (s->env, address, gm_config.local_transport, destination);
  reply (s, GM_REPLY_RCPT_OK, "Ok");
  return TRUE;
}

/* Rules may change the envelope; a refused RCPT must leave it as it was. */
static void
save_envelope (GmSession *s)
{
  if (s->saved_env)
    gm_envelope_free (s->saved_env);
  s->saved_env = gm_envelope_new ();
  s->saved_env->sender = g_strdup (s->env->sender);
  for (guint i = 0; i < s->env->rcpts->len; i++)
    {
      GmSpoolRcpt *r = g_ptr_array_index (s->env->rcpts, i);
      gm_envelope_add_rcpt (s->saved_env, r->address, r->transport, r->destination);
    }
}

static void
restore_envelope (GmSession *s)
{
  if (!s->saved_env || !s->env)
    return;
  GPtrArray *rcpts = s->env->rcpts;
  s->env->rcpts = s->saved_env->rcpts;
  s->saved_env->rcpts = rcpts;
  char *sender = s->env->sender;
  s->env->sender = s->saved_env->sender;
  s->saved_env->sender = sender;
}

static void
cmd_rcpt (GmSession *s, char *arg)
{
  if (!s->env)
    {
      reply (s, GM_REPLY_BAD_SEQUENCE, "Error: need MAIL command");
      return;
    }
  if (!has_prefix_ci (arg, "TO:"))
    {
      reply (s, GM_REPLY_SYNTAX, "Syntax: RCPT TO:<address>");
      return;
    }
  GmPath path;
  GmParam params[GM_MAX_PARAMS];
  guint n_params;
  if (!parse_command_path (s, arg + 3, GM_PATH_RECIPIENT, &path, params, &n_params))
    return;
  if (n_params > 0)
    replyf (s, GM_REPLY_BAD_PARAMETER, "Unsupported parameter: %s", params[0].keyword);
  else if (path.utf8 && !s->smtputf8)
    reply (s, GM_REPLY_NON_ASCII_ADDRESS, NULL);
  else if (s->env->rcpts->len >= gm_config.max_recipients)
    reply (s, GM_REPLY_TOO_MANY_RECIPIENTS, NULL);
  else
    {
      g_autofree char *address = gm_path_to_string (&path);
      if (ask_policy (s, GM_STAGE_RCPT, address))
        {
          save_envelope (s);
          gm_path_clear (&s->stage_path);
          s->stage_path = path;         /* kept until the verdict */
          return;
        }
      proceed_rcpt (s, &path);
    }
  gm_path_clear (&path);
}

static gboolean
check_ready_for_data (GmSession *s)
{
  if (!s->env)
    {
      reply (s, GM_REPLY_BAD_SEQUENCE, "Error: need MAIL command");
      return FALSE;
    }
  if (s->env->rcpts->len == 0)
    {
      if (s->rcpt_refused)
        reply (s, GM_REPLY_NO_VALID_RECIPIENTS, NULL);
      else
        reply (s, GM_REPLY_BAD_SEQUENCE, "Error: need RCPT command");
      return FALSE;
    }
  return TRUE;
}

/* After a refused DATA: RFC 2920 §3.1 has the client wait for the 354 before
 * it sends the message, so bytes already buffered behind the DATA line are a
 * message sent too early. Read as commands, its lines would run as commands
 * (a message quoting "RCPT TO:" and "DATA" lines would start a transaction
 * of its own). They are dropped and the connection closed, as Postfix does
 * with smtpd_forbid_unauth_pipelining. Text that arrives in a later read
 * cannot be told from commands, and is read as commands. */
static void
refuse_early_message_text (GmSession *s)
{
  if (s->mode == IN_CLOSED || s->in_pos >= s->in->len)
    return;
  gm_log (NULL, "improper pipelining after DATA from [%s]:%u: %" G_GSIZE_FORMAT
          " byte(s) sent before the reply, dropped", s->conn.client_address, s->conn.client_port,
          s->in->len - s->in_pos);
  s->in_pos = s->in->len;
  replyf (s, GM_REPLY_SYNCHRONIZATION, "%s Error: SMTP protocol synchronization",
          gm_config.hostname);
}

static gboolean
check_data (GmSession *s, const char *arg)
{
  if (*arg)
    {
      reply (s, GM_REPLY_SYNTAX, "Syntax: DATA");
      return FALSE;
    }
  if (s->bdat_used || s->chunk_error >= 0)
    {
      reply (s, GM_REPLY_BAD_SEQUENCE, "Error: DATA after BDAT");
      return FALSE;
    }
  return check_ready_for_data (s);
}

static void
cmd_data (GmSession *s, char *arg)
{
  if (!check_data (s, arg))
    {
      refuse_early_message_text (s);
      return;
    }
  reply (s, GM_REPLY_START_DATA, NULL);
  s->mode = IN_DATA;
  s->line_start = TRUE;
  s->prev_crlf = TRUE;
}

static void
cmd_bdat (GmSession *s, char *arg)
{
  char *space = strchr (arg, ' ');
  gboolean last = FALSE;
  if (space)
    {
      *space = '\0';
      last = g_ascii_strcasecmp (space + 1, "LAST") == 0;
    }
  guint64 size;
  if (!gm_parse_decimal (arg, &size))
    {
      /* The chunk length is unknown: what follows is read as commands. */
      reply (s, GM_REPLY_SYNTAX, "Syntax: BDAT size [LAST]");
      return;
    }
  s->mode = IN_BDAT;
  s->chunk_left = size;
  s->chunk_last = last;
  if (s->chunk_error >= 0)
    return;                     /* the transaction already failed: keep failing */
  if (space && !last)
    s->chunk_error = GM_REPLY_SYNTAX;   /* the length is known: skip the chunk */
  else if (!s->env || s->env->rcpts->len == 0)
    s->chunk_error = !s->env ? GM_REPLY_BAD_SEQUENCE
      : s->rcpt_refused ? GM_REPLY_NO_VALID_RECIPIENTS : GM_REPLY_BAD_SEQUENCE;
  else if (size > gm_config.max_message_size - MIN (s->size, gm_config.max_message_size))
    s->chunk_error = GM_REPLY_TOO_BIG;  /* not s->size + size: a 20-digit size wraps around */
  if (s->env)
    s->bdat_used = TRUE;        /* RFC 3030 §3: no DATA in this transaction any more */
}

static void
cmd_rset (GmSession *s, char *arg)
{
  if (*arg)
    {
      reply (s, GM_REPLY_SYNTAX, "Syntax: RSET");
      return;
    }
  reset_transaction (s);
  reply (s, GM_REPLY_OK, "Ok");
}

static void
cmd_vrfy (GmSession *s, char *arg)
{
  if (!*arg)
    reply (s, GM_REPLY_SYNTAX, "Syntax: VRFY address");
  else
    reply (s, GM_REPLY_VRFY, NULL);
}

typedef struct
{
  const char *verb;
  CommandId id;
} Command;

static const Command commands[] = {
  { "EHLO", CMD_EHLO }, { "HELO", CMD_HELO }, { "MAIL", CMD_MAIL }, { "RCPT", CMD_RCPT },
  { "DATA", CMD_DATA }, { "BDAT", CMD_BDAT }, { "RSET", CMD_RSET }, { "NOOP", CMD_NOOP },
  { "QUIT", CMD_QUIT }, { "VRFY", CMD_VRFY }, { "HELP", CMD_HELP }, { "EXPN", CMD_EXPN },
  { "ETRN", CMD_ETRN }, { "TURN", CMD_TURN },
};

static const char *const command_names[N_COMMANDS] = {
  "ehlo", "helo", "mail", "rcpt", "data", "bdat", "rset", "noop", "quit", "vrfy", "help",
  "expn", "etrn", "turn", "unknown",
};

char *
gm_session_summary (GmSession *s)
{
  GString *out = g_string_new (NULL);
  guint total = 0;
  for (guint i = 0; i < N_COMMANDS; i++)
    if (s->counts[i])
      {
        g_string_append_printf (out, "%s=%u ", command_names[i], s->counts[i]);
        total += s->counts[i];
      }
  g_string_append_printf (out, "commands=%u", total);
  return g_string_free (out, FALSE);
}

static void
dispatch (GmSession *s, char *line)
{
  char *arg = line;
  while (*arg && *arg != ' ')
    arg++;
  gsize verb_len = arg - line;
  if (*arg == ' ')
    *arg++ = '\0';
  CommandId id = CMD_UNKNOWN;
  for (gsize i = 0; i < G_N_ELEMENTS (commands); i++)
    if (verb_len == 4 && g_ascii_strcasecmp (line, commands[i].verb) == 0)
      id = commands[i].id;
  s->counts[id]++;
  switch (id)
    {
    case CMD_EHLO: cmd_helo (s, arg, TRUE); break;
    case CMD_HELO: cmd_helo (s, arg, FALSE); break;
    case CMD_MAIL: cmd_mail (s, arg); break;
    case CMD_RCPT: cmd_rcpt (s, arg); break;
    case CMD_DATA: cmd_data (s, arg); break;
    case CMD_BDAT: cmd_bdat (s, arg); break;
    case CMD_RSET: cmd_rset (s, arg); break;
    case CMD_NOOP: reply (s, GM_REPLY_OK, "Ok"); break;
    case CMD_QUIT:
      reply (s, GM_REPLY_BYE, "Bye");
      s->mode = IN_CLOSED;
      break;
    case CMD_VRFY: cmd_vrfy (s, arg); break;
    case CMD_HELP: reply (s, GM_REPLY_HELP, NULL); break;
    case CMD_EXPN: case CMD_ETRN: case CMD_TURN:
      reply (s, GM_REPLY_NOT_IMPLEMENTED, NULL);
      break;
    default:
      reply (s, GM_REPLY_UNKNOWN_COMMAND, NULL);
      break;
    }
}

/* ---- Envelope changes by rules (envelope-edit.c does the work) -------- */

gboolean
gm_session_set_sender (GmSession *s, const char *address, const char **reason)
{
  if (s->mode == IN_POLICY && s->stage == GM_STAGE_MAIL)
    {
      /* Before the envelope exists: what proceed_mail will use. */
      char *canonical = gm_envelope_canonical_sender (address, reason);
      if (!canonical)
        return FALSE;
      g_free (s->stage_arg);
      s->stage_arg = canonical;
      return TRUE;
    }
  if (!s->env)
    {
      *reason = "no transaction";
      return FALSE;
    }
  return gm_envelope_set_sender (s->env, address, reason);
}

gboolean
gm_session_add_recipient (GmSession *s, const char *address, const char **reason)
{
  if (!s->env)
    {
      *reason = "no transaction";
      return FALSE;
    }
  return gm_envelope_add_recipient (s->env, address, reason);
}

gboolean
gm_session_remove_recipient (GmSession *s, const char *address)
{
  return s->env && gm_envelope_remove_recipient (s->env, address);
}

gboolean
gm_session_set_mailbox (GmSession *s, const char *address, GmTransport transport,
                        const char *template, const char **reason)
{
  if (!s->env)
    {
      *reason = "not a recipient of this message";
      return FALSE;
    }
  return gm_envelope_set_mailbox (s->env, address, transport, template, reason);
}

/* ---- Input ------------------------------------------------------------ */

/* One command line, without its terminator. */
static void
command_line (GmSession *s, char *line, gsize len, gboolean crlf)
{
  if (len + (crlf ? 2 : 1) > gm_config.max_command_length)
    {
      reply (s, GM_REPLY_LINE_TOO_LONG, NULL);
      return;
    }
  if (!crlf && gm_config.bare_line_endings == GM_BARE_REJECT)
    {
      reply (s, GM_REPLY_BAD_COMMAND_BYTES, "Error: bare LF in command (RFC 5321 2.3.8)");
      return;
    }
  if (memchr (line, '\0', len))
    {
      reply (s, GM_REPLY_BAD_COMMAND_BYTES, "Error: NUL character in command");
      return;
    }
  if (memchr (line, '\r', len))
    {
      reply (s, GM_REPLY_BAD_COMMAND_BYTES, "Error: bare CR in command (RFC 5321 2.3.8)");
      return;
    }
  line[len] = '\0';
  dispatch (s, line);
}

static void
process_commands (GmSession *s)
{
  while (s->mode == IN_COMMAND && s->in_pos < s->in->len)
    {
      if (s->out->len >= GM_SESSION_OUTPUT_LIMIT)
        {
          s->stalled = TRUE;    /* the replies must drain first */
          return;
        }
      char *p = s->in->str + s->in_pos;
      gsize avail = s->in->len - s->in_pos;
      char *lf = memchr (p, '\n', avail);
      if (!lf)
        {
          if (avail > gm_config.max_command_length)
            {
              s->discarding_line = TRUE;
              s->in_pos = s->in->len;
            }
          return;
        }
      gsize len = lf - p;
      s->in_pos += len + 1;
      s->requests++;
      if (s->discarding_line)
        {
          s->discarding_line = FALSE;
          reply (s, GM_REPLY_LINE_TOO_LONG, NULL);
          continue;
        }
      gboolean crlf = len > 0 && p[len - 1] == '\r';
      command_line (s, p, crlf ? len - 1 : len, crlf);
    }
}

/* Append message text to the body, bare CRs made line ends (normalise) or
 * noted (reject). Counts nothing. */
static void
body_append_text (GmSession *s, const char *p, gsize len)
{
  const char *cr;
  while (len > 0 && (cr = memchr (p, '\r', len)))
    {
      s->bare_seen = TRUE;
      g_string_append_len (s->body, p, cr - p);
      g_string_append_c (s->body, '\n');
      len -= cr - p + 1;
      p = cr + 1;
    }
  g_string_append_len (s->body, p, len);
}

typedef enum { LINE_CRLF, LINE_LF, LINE_PARTIAL } LineEnd;

/* One DATA line (or a piece of a long one). Returns TRUE at the end of the message. */
static gboolean
data_line (GmSession *s, const char *p, gsize len, LineEnd end)
{
  gboolean proper_start = s->line_start && s->prev_crlf;
  if (proper_start && end == LINE_CRLF && len == 1 && p[0] == '.')
    return TRUE;
  /* RFC 5321 §4.5.2: a leading dot goes only when other characters follow. */
  if (proper_start && len > 1 && p[0] == '.')
    p++, len--;
  /* The size excludes the stuffed dots (RFC 1870 §3). */
  s->size += len + (end == LINE_CRLF ? 2 : end == LINE_LF ? 1 : 0);
  if (end == LINE_LF)
    s->bare_seen = TRUE;
  if (!s->too_big && s->size > gm_config.max_message_size)
    {
      s->too_big = TRUE;
      g_string_truncate (s->body, 0);
    }
  if (!s->too_big)
    {
      body_append_text (s, p, len);
      if (end != LINE_PARTIAL)
        g_string_append_c (s->body, '\n');
    }
  s->line_start = end != LINE_PARTIAL;
  if (end != LINE_PARTIAL)
    s->prev_crlf = end == LINE_CRLF;
  return FALSE;
}

/* Returns TRUE when the message ended. */
static gboolean
process_data (GmSession *s)
{
  while (s->in_pos < s->in->len)
    {
      const char *p = s->in->str + s->in_pos;
      gsize avail = s->in->len - s->in_pos;
      const char *lf = memchr (p, '\n', avail);
      if (!lf)
        {
          if (avail < DATA_PARTIAL_LINE)
            return FALSE;
          /* Keep the last byte: it may be the CR of a CRLF. */
          data_line (s, p, avail - 1, LINE_PARTIAL);
          s->in_pos += avail - 1;
          continue;
        }
      gsize len = lf - p;
      s->in_pos += len + 1;
      gboolean crlf = len > 0 && p[len - 1] == '\r';
      if (data_line (s, p, crlf ? len - 1 : len, crlf ? LINE_CRLF : LINE_LF))
        return TRUE;
    }
  return FALSE;
}

/* BDAT content: CRLF becomes LF; a bare CR or LF is a line end, noted. */
static void
bdat_append (GmSession *s, const char *p, gsize n)
{
  GString *b = s->body;
  gsize i = 0;
  if (s->pending_cr && n > 0)
    {
      s->pending_cr = FALSE;
      if (p[0] == '\n')
        i = 1;
      else
        s->bare_seen = TRUE;
      g_string_append_c (b, '\n');
    }
  while (i < n)
    {
      gsize j = i;
      while (j < n && p[j] != '\r' && p[j] != '\n')
        j++;
      g_string_append_len (b, p + i, j - i);
      if (j == n)
        break;
      if (p[j] == '\n')
        {
          s->bare_seen = TRUE;
          g_string_append_c (b, '\n');
          i = j + 1;
        }
      else if (j + 1 == n)
        {
          s->pending_cr = TRUE;
          i = n;
        }
      else
        {
          if (p[j + 1] == '\n')
            i = j + 2;
          else
            {
              s->bare_seen = TRUE;
              i = j + 1;
            }
          g_string_append_c (b, '\n');
        }
    }
}

/* Returns TRUE when a LAST chunk completed a message that must be spooled. */
static gboolean
process_bdat (GmSession *s)
{
  gsize avail = s->in->len - s->in_pos;
  gsize take = MIN ((guint64) avail, s->chunk_left);
  if (s->chunk_error < 0)
    {
      bdat_append (s, s->in->str + s->in_pos, take);
      s->size += take;
    }
  s->in_pos += take;
  s->chunk_left -= take;
  if (s->chunk_left > 0)
    return FALSE;

  s->mode = IN_COMMAND;
  if (s->chunk_error >= 0)
    {
      GmReplyKind kind = s->chunk_error;
      if (kind == GM_REPLY_BAD_SEQUENCE)
        reply (s, kind, !s->env ? "Error: need MAIL command" : "Error: need RCPT command");
      else if (kind == GM_REPLY_SYNTAX)
        reply (s, kind, "Syntax: BDAT size [LAST]");
      else
        reply (s, kind, NULL);
      if (s->chunk_last || !s->env)
        reset_transaction (s);
      return FALSE;
    }
  if (!s->chunk_last)
    {
      replyf (s, GM_REPLY_CHUNK_OK, "%" G_GUINT64_FORMAT " octets received", s->size);
      return FALSE;
    }
  if (s->pending_cr)
    {
      s->pending_cr = FALSE;
      s->bare_seen = TRUE;
      g_string_append_c (s->body, '\n');
    }
  return TRUE;
}

static GmSessionAction
process (GmSession *s)
{
  GmSessionAction action = GM_SESSION_WANT_INPUT;
  s->stalled = FALSE;
  for (;;)
    {
      gsize before = s->in_pos;
      InputMode mode = s->mode;
      if (mode == IN_COMMAND)
        process_commands (s);
      else if (mode == IN_DATA)
        {
          if (process_data (s))
            action = finish_message (s);
        }
      else if (mode == IN_BDAT)
        {
          if (process_bdat (s))
            action = finish_message (s);
        }
      if (action != GM_SESSION_WANT_INPUT || s->mode == IN_CLOSED || s->mode == IN_SPOOLING
          || s->mode == IN_POLICY)
        break;
      if (s->in_pos == before && s->mode == mode)
        break;                  /* needs more input */
    }
  /* Drop what has been consumed. */
  if (s->in_pos > 0)
    {
      g_string_erase (s->in, 0, s->in_pos);
      s->in_pos = 0;
    }
  if (s->mode == IN_CLOSED)
    return GM_SESSION_CLOSE;
  if (s->mode == IN_POLICY)
    return GM_SESSION_POLICY;
  return action;
}

GmSessionAction
gm_session_feed (GmSession *s, const char *data, gsize len)
{
  if (s->mode == IN_CLOSED)
    return GM_SESSION_CLOSE;
  g_string_append_len (s->in, data, len);
  if (s->mode == IN_SPOOLING || s->mode == IN_POLICY)
    return GM_SESSION_WANT_INPUT;
  return process (s);
}

GmSessionAction
gm_session_spooled (GmSession *s, const GError *error)
{
  g_return_val_if_fail (s->mode == IN_SPOOLING, GM_SESSION_CLOSE);
  GmEnvelope *env = s->env;
  if (!error)
    {
      replyf (s, GM_REPLY_QUEUED, "Ok: queued as %s", env->id);
      gm_log (env->id, "client=[%s]:%u, helo=%s, proto=%s, from=<%s>, size=%" G_GUINT64_FORMAT
              ", nrcpt=%u%s%s", s->conn.client_address, s->conn.client_port, s->helo,
              env->protocol, env->sender, s->size, env->rcpts->len,
              env->quarantine ? ", quarantine=" : "", env->quarantine ? env->quarantine : "");
    }
  else
    {
      gm_log (env->id, "queue file write error: %s", error->message);
      gboolean full = g_error_matches (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_NO_SPACE);
      reply (s, full ? GM_REPLY_NO_SPACE : GM_REPLY_SPOOL_ERROR, NULL);
    }
  reset_transaction (s);
  if (s->mode == IN_CLOSED)
    return GM_SESSION_CLOSE;
  s->mode = IN_COMMAND;
  return process (s);
}

/* A quarantine verdict: for the transaction, or the session (connect, helo). */
static void
set_quarantine (GmSession *s, const char *name, gboolean whole_session)
{
  if (!name)
    return;
  g_free (s->quarantine);
  s->quarantine = g_strdup (name);
  if (whole_session)
    {
      g_free (s->quarantine_session);
      s->quarantine_session = g_strdup (name);
    }
}

GmSessionAction
gm_session_policy_done (GmSession *s, const GmVerdict *v)
{
  g_return_val_if_fail (s->mode == IN_POLICY, GM_SESSION_CLOSE);
  GmStage stage = s->stage;
  gboolean proceed = v->kind == GM_VERDICT_NEXT || v->kind == GM_VERDICT_ACCEPT
    || v->kind == GM_VERDICT_DISCARD || v->kind == GM_VERDICT_QUARANTINE;
  gboolean discard = v->kind == GM_VERDICT_DISCARD;
  const char *quarantine = v->kind == GM_VERDICT_QUARANTINE ? v->text : NULL;
  s->mode = IN_COMMAND;
  if (!proceed)
    reply_verdict (s, v);

  /* A discard applies once what it was said about is accepted: the whole
   * session at connect and helo, the transaction at mail, rcpt and data. */
  switch (stage)
    {
    case GM_STAGE_CONNECT:
      if (proceed)
        {
          s->discard_session = discard;
          s->discard = discard;
          set_quarantine (s, quarantine, TRUE);
          proceed_greeting (s);
        }
      else
        s->mode = IN_CLOSED;    /* refused at connect: nothing more to say */
      break;
    case GM_STAGE_HELO:
      if (proceed)
        {
          s->discard_session |= discard;
          set_quarantine (s, quarantine, TRUE);
          proceed_helo (s, s->stage_arg, s->stage_extended);
        }
      break;
    case GM_STAGE_MAIL:
      if (proceed)
        {
          proceed_mail (s, s->stage_arg, s->stage_smtputf8);
          s->discard |= discard;
          set_quarantine (s, quarantine, FALSE);
        }
      break;
    case GM_STAGE_RCPT:
      if (proceed)
        {
          if (proceed_rcpt (s, &s->stage_path))
            {
              s->discard |= discard;
              set_quarantine (s, quarantine, FALSE);
            }
          else
            restore_envelope (s);     /* routing refused it after all */
        }
      else
        {
          s->rcpt_refused = TRUE;
          restore_envelope (s);
        }
      g_clear_pointer (&s->saved_env, gm_envelope_free);
      gm_path_clear (&s->stage_path);
      break;
    case GM_STAGE_DATA:
      if (proceed)
        {
          /* A close asked by the error count wins over spooling. */
          if (s->mode == IN_CLOSED)
            return GM_SESSION_CLOSE;
          s->discard |= discard;
          set_quarantine (s, quarantine, FALSE);
          g_clear_pointer (&s->stage_arg, g_free);
          GmSessionAction action = proceed_data (s);
          if (action != GM_SESSION_WANT_INPUT)
            return action;
        }
      else
        reset_transaction (s);
      break;
    default:
      break;
    }
  g_clear_pointer (&s->stage_arg, g_free);
  if (s->mode == IN_CLOSED)
    return GM_SESSION_CLOSE;
  return process (s);
}
