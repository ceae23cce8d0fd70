/* session-replay.c — feed a scripted conversation to the SMTP state machine
 * and print every client line, reply and spooled message (golden files,
 * STYLE.md §17). No network, no disk: spooling is simulated.
 *
 * Script lines:
 *   # comment                      ignored
 *   set KEY=VALUE                  a setting, as --set (before the first client line)
 *   local-domains D1 D2...         the local domains (default: example.test)
 *   spool-fail io|nospace          the next spool attempts fail this way
 *   spool-ok                       spooling succeeds again (the default)
 *   raw TEXT                       bytes sent as is; \r \n \t \\ \0 and \xHH are decoded
 *   anything else                  a client line, sent with CRLF
 * Output: ">>> line" for what the client sent, "<<< reply" for each reply
 * line, "*** spooled ..." plus the message for each spool. */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "log.h"
#include "settings.h"
#include "smtp-reply.h"
#include "smtp-session.h"
#include "spool.h"

static int spool_failure = -1;  /* GmSpoolError, or -1 */

static GString *
decode (const char *text)
{
  GString *out = g_string_new (NULL);
  for (const char *p = text; *p; p++)
    {
      if (*p != '\\' || !p[1])
        {
          g_string_append_c (out, *p);
          continue;
        }
      p++;
      switch (*p)
        {
        case 'r': g_string_append_c (out, '\r'); break;
        case 'n': g_string_append_c (out, '\n'); break;
        case 't': g_string_append_c (out, '\t'); break;
        case '0': g_string_append_c (out, '\0'); break;
        case 'x':
          if (g_ascii_isxdigit (p[1]) && g_ascii_isxdigit (p[2]))
            {
              g_string_append_c (out, g_ascii_xdigit_value (p[1]) * 16 + g_ascii_xdigit_value (p[2]));
              p += 2;
            }
          break;
        default: g_string_append_c (out, *p); break;
        }
    }
  return out;
}

/* Print bytes with CR, LF, NUL and control bytes made visible. */
static void
print_escaped (const char *prefix, const char *p, gsize len, const char *id)
{
  GString *line = g_string_new (prefix);
  for (gsize i = 0; i < len; i++)
    {
      if (id && *id && len - i >= strlen (id) && memcmp (p + i, id, strlen (id)) == 0)
        {
          g_string_append (line, "QUEUEID");
          i += strlen (id) - 1;
          continue;
        }
      guchar c = p[i];
      if (c == '\r')
        g_string_append (line, "\\r");
      else if (c == '\n')
        g_string_append (line, "\\n");
      else if (c == '\\')
        g_string_append (line, "\\\\");
      else if (c < 32 || c == 127)
        g_string_append_printf (line, "\\x%02X", c);
      else
        g_string_append_c (line, c);
    }
  puts (line->str);
  g_string_free (line, TRUE);
}

static char last_id[64];

/* Log lines are part of the golden output, without time stamps. */
static void
print_log (const char *line)
{
  print_escaped ("*** log: ", line, strlen (line), last_id);
}

static void
print_output (GmSession *s)
{
  GString *out = gm_session_output (s);
  const char *p = out->str, *end = out->str + out->len;
  while (p < end)
    {
      const char *nl = memchr (p, '\n', end - p);
      gsize len = nl ? (gsize) (nl - p + 1) : (gsize) (end - p);
      /* Replies end with CRLF: print them without it, flag anything else. */
      if (len >= 2 && p[len - 2] == '\r' && p[len - 1] == '\n')
        print_escaped ("<<< ", p, len - 2, last_id);
      else
        print_escaped ("<<< (unterminated) ", p, len, last_id);
      p += len;
    }
  g_string_truncate (out, 0);
}

static GmSessionAction
handle (GmSession *s, GmSessionAction action)
{
  while (action == GM_SESSION_SPOOL)
    {
      GmEnvelope *env;
      const GString *header, *body;
      gm_session_message (s, &env, &header, &body);
      g_strlcpy (last_id, env->id, sizeof last_id);
      print_output (s);
      printf ("*** spooled from=<%s> proto=%s rcpts=", env->sender, env->protocol);
      for (guint i = 0; i < env->rcpts->len; i++)
        {
          GmSpoolRcpt *r = g_ptr_array_index (env->rcpts, i);
          printf ("%s<%s>", i ? "," : "", r->address);
        }
      printf (" size=%zu\n", body->len);
      /* The Received: header has a date: show only its first line. */
      const char *nl = strchr (header->str, '\n');
      print_escaped ("*** header ", header->str, nl ? (gsize) (nl - header->str) : header->len,
                     last_id);
      const char *p = body->str, *end = body->str + body->len;
      while (p < end)
        {
          const char *lf = memchr (p, '\n', end - p);
          gsize len = lf ? (gsize) (lf - p) : (gsize) (end - p);
          print_escaped ("*** | ", p, len, NULL);
          p += len + (lf ? 1 : 0);
        }
      GError *error = NULL;
      if (spool_failure >= 0)
        g_set_error (&error, GM_SPOOL_ERROR, spool_failure, "simulated failure");
      action = gm_session_spooled (s, error);
      g_clear_error (&error);
    }
  print_output (s);
  if (action == GM_SESSION_CLOSE)
    puts ("*** close");
  return action;
}

int
main (int argc, char **argv)
{
  if (argc != 2)
    {
      fprintf (stderr, "usage: session-replay SCRIPT\n");
      return 2;
    }
  FILE *f = fopen (argv[1], "r");
  if (!f)
    {
      perror (argv[1]);
      return 2;
    }
  gm_log_set_writer (print_log);
  gm_config_reset ();
  g_free (gm_config.hostname);
  gm_config.hostname = g_strdup ("mx.example.test");
  g_free (gm_config.state_dir);
  gm_config.state_dir = g_strdup ("/spool");
  const char *default_domains[] = { "example.test", NULL };
  g_strfreev (gm_config.local_domains);
  gm_config.local_domains = g_strdupv ((char **) default_domains);

  GmSession *s = NULL;
  GmSessionAction action = GM_SESSION_WANT_INPUT;
  char buf[65536];
  while (fgets (buf, sizeof buf, f))
    {
      buf[strcspn (buf, "\n")] = '\0';
      if (buf[0] == '#' || buf[0] == '\0')
        continue;
      if (g_str_has_prefix (buf, "set "))
        {
          GError *error = NULL;
          if (!gm_config_apply_override (buf + 4, &error))
            {
              fprintf (stderr, "%s\n", error->message);
              return 2;
            }
          continue;
        }
      if (g_str_has_prefix (buf, "local-domains "))
        {
          g_strfreev (gm_config.local_domains);
          gm_config.local_domains = g_strsplit (buf + 14, " ", -1);
          continue;
        }
      if (g_str_has_prefix (buf, "spool-fail "))
        {
          spool_failure = strcmp (buf + 11, "nospace") == 0 ? GM_SPOOL_ERROR_NO_SPACE : GM_SPOOL_ERROR_IO;
          continue;
        }
      if (strcmp (buf, "spool-ok") == 0)
        {
          spool_failure = -1;
          continue;
        }
      if (!s)
        {
          GmConnInfo conn = { "192.0.2.1", 40000, "192.0.2.25", 25 };
          s = gm_session_new (&conn);
          gm_session_greet (s);
          print_output (s);
        }
      if (action == GM_SESSION_CLOSE)
        {
          print_escaped (">>> (after close, not sent) ", buf, strlen (buf), NULL);
          continue;
        }
      GString *bytes;
      if (g_str_has_prefix (buf, "raw "))
        bytes = decode (buf + 4);
      else
        {
          bytes = g_string_new (buf);
          g_string_append (bytes, "\r\n");
        }
      print_escaped (">>> ", bytes->str, bytes->len, NULL);
      action = handle (s, gm_session_feed (s, bytes->str, bytes->len));
      /* The output is printed and emptied: go on with what the session
       * left for it to drain (GM_SESSION_OUTPUT_LIMIT). */
      while (action == GM_SESSION_WANT_INPUT && gm_session_stalled (s))
        action = handle (s, gm_session_feed (s, NULL, 0));
      g_string_free (bytes, TRUE);
    }
  fclose (f);
  gm_session_free (s);
  return 0;
}
