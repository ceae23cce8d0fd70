/* fuzz-command.c — one SMTP command line, in each state of a conversation
 * (src/smtp-session.c's command dispatch and checks, src/smtp-parse.c).
 *
 * Input: one state byte, one settings byte, then the command line; the
 * target adds CRLF. (A line holding LF is several commands: that is fine.)
 *   state byte % 6: 0 just greeted, 1 after HELO, 2 after EHLO, 3 after EHLO
 *     and MAIL, 4 after EHLO, MAIL and RCPT, 5 after EHLO and MAIL ... SMTPUTF8
 *   settings byte: bit 0 bare-line-endings reject, bit 1 the small limits
 *
 * Checks: every reply is well-formed (fuzz_check_replies); and when the
 * session neither closed nor started reading message data, it still answers
 * NOOP with exactly "250 2.0.0 Ok": no command leaves it confused. */
#include "config.h"

#include "fuzz.h"
#include "smtp-session.h"

static const char *const prefixes[] = {
  "",
  "HELO client.example\r\n",
  "EHLO client.example\r\n",
  "EHLO client.example\r\nMAIL FROM:<alice@example.test>\r\n",
  "EHLO client.example\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n",
  "EHLO client.example\r\nMAIL FROM:<al\xc3\xaf" "ce@example.test> SMTPUTF8\r\n",
};

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  gm_log_set_writer (fuzz_log_discard);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 2)
    return 0;
  fuzz_config_setup (data[1] & 1, data[1] & 2);
  GmConnInfo conn = { "192.0.2.1", 40000, "192.0.2.25", 25 };
  GmSession *s = gm_session_new (&conn);
  FUZZ_CHECK (gm_session_greet (s) == GM_SESSION_WANT_INPUT, "greeting");
  const char *prefix = prefixes[data[0] % G_N_ELEMENTS (prefixes)];
  FUZZ_CHECK (gm_session_feed (s, prefix, strlen (prefix)) == GM_SESSION_WANT_INPUT, "prefix");
  GString *out = gm_session_output (s);
  FUZZ_CHECK (!strstr (out->str, "\r\n5") && !strstr (out->str, "\r\n4"),
              "the prefix was refused: %s", out->str);
  g_string_truncate (out, 0);

  GString *line = g_string_new_len ((const char *) data + 2, size - 2);
  g_string_append (line, "\r\n");
  GmSessionAction action = gm_session_feed (s, line->str, line->len);
  g_string_free (line, TRUE);
  fuzz_check_replies (out);

  /* No policy here, and spooling is not this target's business. */
  FUZZ_CHECK (action == GM_SESSION_WANT_INPUT || action == GM_SESSION_CLOSE
              || action == GM_SESSION_SPOOL, "action %d", action);
  if (action == GM_SESSION_WANT_INPUT && !gm_session_reading_data (s))
    {
      g_string_truncate (out, 0);
      action = gm_session_feed (s, "NOOP\r\n", 6);
      /* Pipelined lines end while the NOOP waits: all their replies come. */
      if (action == GM_SESSION_WANT_INPUT && !gm_session_reading_data (s))
        {
          FUZZ_CHECK (g_str_has_suffix (out->str, "250 2.0.0 Ok\r\n"),
                      "NOOP after the command got: %s", out->str);
        }
      fuzz_check_replies (out);
    }
  g_free (gm_session_summary (s));
  gm_session_free (s);
  return 0;
}
