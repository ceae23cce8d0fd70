/* smtp-session.h — the SMTP server state machine (no I/O).
 *
 * Bytes go in with gm_session_feed(); replies accumulate in
 * gm_session_output(); the return value says what the caller must do next.
 * While an action is outstanding (SPOOL) the session reads nothing more: the
 * rest of the input waits in its buffer. */
#pragma once
#include <glib.h>
#include "spool.h"
#include "verdict.h"

typedef struct GmSession GmSession;

typedef struct
{
  const char *client_address;   /* "192.0.2.1", "2001:db8::1" */
  guint16 client_port;
  const char *local_address;
  guint16 local_port;
} GmConnInfo;

typedef enum
{
  GM_SESSION_WANT_INPUT,        /* send the output, then feed more bytes */
  GM_SESSION_SPOOL,             /* a message is complete: take it, spool it, call gm_session_spooled() */
  GM_SESSION_CLOSE,             /* send the output, then close the connection */
  GM_SESSION_POLICY,            /* run the rules of gm_session_policy_stage(), then gm_session_policy_done() */
} GmSessionAction;

GmSession *gm_session_new (const GmConnInfo *conn);
void gm_session_free (GmSession *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GmSession, gm_session_free)

/* Which stages have policy rules (bit 1 << GmStage): the session asks for
 * those only. Call before gm_session_greet(). */
void gm_session_set_policy (GmSession *s, guint stage_mask);

/* Start the conversation: the 220 greeting, or first the connect rules. */
GmSessionAction gm_session_greet (GmSession *s);

/* After GM_SESSION_POLICY: the stage whose rules must run, and their argument
 * (client address, HELO name, sender, recipient, or queue id for data). */
GmStage gm_session_policy_stage (GmSession *s, const char **arg);

/* The rules decided V: apply it and go on with buffered input. */
GmSessionAction gm_session_policy_done (GmSession *s, const GmVerdict *v);

/* Append input bytes and process as much as possible. */
GmSessionAction gm_session_feed (GmSession *s, const char *data, gsize len);

/* Replies waiting to be sent; the caller removes what it has written. */
GString *gm_session_output (GmSession *s);

/* The session reads no more commands while this many bytes of replies wait
 * to be sent: a client that pipelines commands with long replies (EHLO,
 * HELP) and never reads them cannot make it hold more than about this much
 * (RFC 2920 §3.1 expects the server to stop reading, not to buffer). */
#define GM_SESSION_OUTPUT_LIMIT (64 * 1024)

/* TRUE when input waits that the session stopped reading because of
 * GM_SESSION_OUTPUT_LIMIT: once the output has drained, call
 * gm_session_feed (s, NULL, 0) to go on. */
gboolean gm_session_stalled (GmSession *s);

/* The message to spool, after GM_SESSION_SPOOL (or to show to the data
 * rules, after GM_SESSION_POLICY for the data stage). The envelope has its queue
 * id; HEADER is the Received: line(s); BODY the message with LF line ends.
 * All stay owned by the session and unchanged until gm_session_spooled(). */
void gm_session_message (GmSession *s, GmEnvelope **env, const GString **header,
                         const GString **body);

/* The spool finished: ERROR NULL on success. Queues the reply, resets the
 * transaction and goes on with buffered input. */
GmSessionAction gm_session_spooled (GmSession *s, const GError *error);

/* Facts for the rules. */
const GmConnInfo *gm_session_conn (GmSession *s);
const char *gm_session_helo (GmSession *s);            /* NULL before HELO/EHLO */
gboolean gm_session_esmtp (GmSession *s);
const GmEnvelope *gm_session_envelope (GmSession *s);  /* NULL outside a transaction */
guint64 gm_session_size (GmSession *s);                /* bytes of the message received */
GString *gm_session_body (GmSession *s);               /* the message, LF line ends */

/* Envelope changes by rules (mail stage: the sender only; rcpt and data
 * stages: all). FALSE with a static *REASON when refused. Recipients added
 * are routed like RCPT ones: local domains only for now. */
gboolean gm_session_set_sender (GmSession *s, const char *address, const char **reason);
gboolean gm_session_add_recipient (GmSession *s, const char *address, const char **reason);
gboolean gm_session_remove_recipient (GmSession *s, const char *address);
/* Deliver recipient ADDRESS into TEMPLATE (as in deliver-local) instead. */
gboolean gm_session_set_mailbox (GmSession *s, const char *address, GmTransport transport,
                                 const char *template, const char **reason);

/* Facts for the I/O layer. */
gboolean gm_session_reading_data (GmSession *s);   /* DATA or BDAT content: data-timeout applies */
gboolean gm_session_in_transaction (GmSession *s); /* MAIL given and not finished */
/* Command lines read so far, whole (the I/O layer's command-timeout restarts
 * only when this grows, not with every byte). */
guint64 gm_session_requests (GmSession *s);

/* "ehlo=1 mail=1 rcpt=2 data=1 quit=1 commands=6", for the disconnect log line. */
char *gm_session_summary (GmSession *s);

/* Queue a 421 and ask to close (timeout, shutdown). */
GmSessionAction gm_session_abort (GmSession *s, guint reply_kind);
