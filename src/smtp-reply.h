/* smtp-reply.h — every SMTP reply the server sends, and the one function that formats them. */
#pragma once
#include <glib.h>

typedef enum
{
  GM_REPLY_GREETING,            /* 220 */
  GM_REPLY_EHLO,                /* 250, no enhanced code (RFC 2034 §3) */
  GM_REPLY_OK,                  /* 250 2.0.0 */
  GM_REPLY_SENDER_OK,           /* 250 2.1.0 */
  GM_REPLY_RCPT_OK,             /* 250 2.1.5 */
  GM_REPLY_QUEUED,              /* 250 2.0.0 */
  GM_REPLY_CHUNK_OK,            /* 250 2.0.0 */
  GM_REPLY_BYE,                 /* 221 2.0.0 */
  GM_REPLY_START_DATA,          /* 354 */
  GM_REPLY_VRFY,                /* 252 2.5.0 */
  GM_REPLY_HELP,                /* 214 2.0.0 */
  GM_REPLY_UNKNOWN_COMMAND,     /* 500 5.5.2 */
  GM_REPLY_LINE_TOO_LONG,       /* 500 5.5.2 */
  GM_REPLY_BAD_COMMAND_BYTES,   /* 500 5.5.2 */
  GM_REPLY_SYNTAX,              /* 501 5.5.4 */
  GM_REPLY_NOT_IMPLEMENTED,     /* 502 5.5.1 */
  GM_REPLY_BAD_SEQUENCE,        /* 503 5.5.1 */
  GM_REPLY_BAD_SENDER,          /* 501 5.1.7 */
  GM_REPLY_BAD_RECIPIENT,       /* 501 5.1.3 */
  GM_REPLY_NON_ASCII_ADDRESS,   /* 553 5.6.7 */
  GM_REPLY_BAD_PARAMETER,       /* 555 5.5.4 */
  GM_REPLY_TOO_BIG,             /* 552 5.3.4 */
  GM_REPLY_HEADER_TOO_BIG,      /* 552 5.3.4 */
  GM_REPLY_TOO_MANY_RECIPIENTS, /* 452 4.5.3 */
  GM_REPLY_RELAY_DENIED,        /* 554 5.7.1 */
  GM_REPLY_NO_SUCH_MAILBOX,     /* 550 5.1.1 */
  GM_REPLY_NO_VALID_RECIPIENTS, /* 554 5.5.1 */
  GM_REPLY_BARE_LINE_ENDING,    /* 550 5.6.0 */
  GM_REPLY_SPOOL_ERROR,         /* 451 4.3.0 */
  GM_REPLY_NO_SPACE,            /* 452 4.3.1 */
  GM_REPLY_TOO_MANY_ERRORS,     /* 421 4.7.0 */
  GM_REPLY_TIMEOUT,             /* 421 4.4.2 */
  GM_REPLY_SHUTDOWN,            /* 421 4.3.2 */
  GM_REPLY_TOO_MANY_CONNECTIONS,/* 421 4.7.0 */
  GM_REPLY_SYNCHRONIZATION,     /* 421 4.5.0 */
  GM_REPLY_N_KINDS
} GmReplyKind;

/* Append the reply of KIND to OUT. TEXT replaces the table's text when not
 * NULL; lines of a multi-line reply are separated by '\n' in TEXT. Returns
 * the reply code. */
guint gm_reply (GString *out, GmReplyKind kind, const char *text);
guint gm_reply_printf (GString *out, GmReplyKind kind, const char *fmt, ...) G_GNUC_PRINTF (3, 4);
guint gm_reply_code (GmReplyKind kind);

/* A reply whose code and enhanced status code (ESC, may be NULL) come from
 * elsewhere: a policy verdict, already validated (gm_verdict_check). */
void gm_reply_with_code (GString *out, guint code, const char *esc, const char *text);
