/* smtp-reply.c — the one reply path (RFC 5321 §4.2, enhanced codes RFC 3463/5248).
 *
 * Codes and enhanced status codes live in this table only; the session asks
 * for a reply by kind. Multi-line replies use "CODE-" on every line but the last. */
#include "config.h"
#include "smtp-reply.h"

#include <string.h>

typedef struct
{
  guint code;
  const char *esc;              /* enhanced status code, NULL for 220/354 */
  const char *text;
} ReplyRow;

static const ReplyRow replies[GM_REPLY_N_KINDS] = {
  [GM_REPLY_GREETING] = { 220, NULL, "ESMTP Guillemot" },
  [GM_REPLY_EHLO] = { 250, NULL, "Hello" },
  [GM_REPLY_OK] = { 250, "2.0.0", "Ok" },
  [GM_REPLY_SENDER_OK] = { 250, "2.1.0", "Sender ok" },
  [GM_REPLY_RCPT_OK] = { 250, "2.1.5", "Recipient ok" },
  [GM_REPLY_QUEUED] = { 250, "2.0.0", "Ok: queued" },
  [GM_REPLY_CHUNK_OK] = { 250, "2.0.0", "Chunk received" },
  [GM_REPLY_BYE] = { 221, "2.0.0", "Bye" },
  [GM_REPLY_START_DATA] = { 354, NULL, "End data with <CR><LF>.<CR><LF>" },
  [GM_REPLY_VRFY] = { 252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery" },
  [GM_REPLY_HELP] = { 214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP" },
  [GM_REPLY_UNKNOWN_COMMAND] = { 500, "5.5.2", "Error: command not recognized" },
  [GM_REPLY_LINE_TOO_LONG] = { 500, "5.5.2", "Error: line too long" },
  [GM_REPLY_BAD_COMMAND_BYTES] = { 500, "5.5.2", "Error: bad character in command" },
  [GM_REPLY_SYNTAX] = { 501, "5.5.4", "Syntax error" },
  [GM_REPLY_NOT_IMPLEMENTED] = { 502, "5.5.1", "Error: command not implemented" },
  [GM_REPLY_BAD_SEQUENCE] = { 503, "5.5.1", "Error: bad sequence of commands" },
  [GM_REPLY_BAD_SENDER] = { 501, "5.1.7", "Bad sender address syntax" },
  [GM_REPLY_BAD_RECIPIENT] = { 501, "5.1.3", "Bad recipient address syntax" },
  [GM_REPLY_NON_ASCII_ADDRESS] = { 553, "5.6.7", "Non-ASCII address requires SMTPUTF8" },
  [GM_REPLY_BAD_PARAMETER] = { 555, "5.5.4", "Unsupported parameter" },
  [GM_REPLY_TOO_BIG] = { 552, "5.3.4", "Message size exceeds fixed limit" },
  [GM_REPLY_HEADER_TOO_BIG] = { 552, "5.3.4", "Message header size exceeds fixed limit" },
  [GM_REPLY_TOO_MANY_RECIPIENTS] = { 452, "4.5.3", "Error: too many recipients" },
  [GM_REPLY_RELAY_DENIED] = { 554, "5.7.1", "Relay access denied" },
  [GM_REPLY_NO_SUCH_MAILBOX] = { 550, "5.1.1", "Recipient address rejected" },
  [GM_REPLY_NO_VALID_RECIPIENTS] = { 554, "5.5.1", "Error: no valid recipients" },
  [GM_REPLY_BARE_LINE_ENDING] = { 550, "5.6.0", "Message contains bare CR or LF line endings (RFC 5321 2.3.8)" },
  [GM_REPLY_SPOOL_ERROR] = { 451, "4.3.0", "Error: queue file write error" },
  [GM_REPLY_NO_SPACE] = { 452, "4.3.1", "Insufficient system storage" },
  [GM_REPLY_TOO_MANY_ERRORS] = { 421, "4.7.0", "Error: too many errors" },
  [GM_REPLY_TIMEOUT] = { 421, "4.4.2", "Error: timeout exceeded" },
  [GM_REPLY_SHUTDOWN] = { 421, "4.3.2", "Service shutting down" },
  [GM_REPLY_TOO_MANY_CONNECTIONS] = { 421, "4.7.0", "Error: too many connections" },
  [GM_REPLY_SYNCHRONIZATION] = { 421, "4.5.0", "Error: SMTP protocol synchronization" },
};

guint
gm_reply_code (GmReplyKind kind)
{
  g_return_val_if_fail (kind < GM_REPLY_N_KINDS, 451);
  return replies[kind].code;
}

/* RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, CRLF included. */
#define MAX_REPLY_LINE 512

void
gm_reply_with_code (GString *out, guint code, const char *esc, const char *text)
{
  for (;;)
    {
      const char *nl = strchr (text, '\n');
      gsize len = nl ? (gsize) (nl - text) : strlen (text);
      /* Text that echoes the client (a parameter keyword can fill a whole
       * command line) is cut to fit, at a character boundary. */
      gsize room = MAX_REPLY_LINE - strlen ("NNN \r\n") - (esc ? strlen (esc) + 1 : 0);
      if (len > room)
        {
          len = room;
          while (len > 0 && ((guchar) text[len] & 0xc0) == 0x80)
            len--;
        }
      g_string_append_printf (out, "%u%c", code, nl ? '-' : ' ');
      if (esc)
        g_string_append_printf (out, "%s ", esc);
      /* Never let CR or LF from an argument split the reply. */
      for (gsize i = 0; i < len; i++)
        g_string_append_c (out, text[i] == '\r' ? ' ' : text[i]);
      g_string_append (out, "\r\n");
      if (!nl)
        break;
      text = nl + 1;
    }
}

guint
gm_reply (GString *out, GmReplyKind kind, const char *text)
{
  g_return_val_if_fail (kind < GM_REPLY_N_KINDS, 0);
  const ReplyRow *row = &replies[kind];
  gm_reply_with_code (out, row->code, row->esc, text ? text : row->text);
  return row->code;
}

guint
gm_reply_printf (GString *out, GmReplyKind kind, const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  g_autofree char *text = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  return gm_reply (out, kind, text);
}
