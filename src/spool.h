/* spool.h — durable queue files, one per message (DESIGN.md §5).
 *
 * STATE-DIR/spool/{incoming,queue,deferred,hold,corrupt,quarantine,free}/
 * (free/ holds delivered queue files kept for reuse: creating and deleting a
 * file per message costs more than overwriting one)
 * A queue file is written in incoming/, fsynced, renamed into queue/, and the
 * queue/ directory is fsynced (concurrent writers share that directory fsync).
 * Only then may the server answer 250.
 *
 * File format (text records, one per line, then the message):
 *
 *   GUILLEMOT-QUEUE 1
 *   I <queue id>
 *   A <arrival, unix seconds>
 *   C <client address>
 *   H <helo name>
 *   P <protocol: SMTP, ESMTP, UTF8SMTP, ...>
 *   S <sender address, empty for the null sender>
 *   Q<status>                            only when queued rules were loaded: P they are
 *                                        still to run, D they ran (rewritten in place)
 *   R<status> <recipient address>        status: P pending, D delivered, F failed
 *   T <transport> <destination>          for the R record just above: "maildir DIR" or "mbox FILE"
 *   O <16 hex digits, or 16 '-'>         mbox only: where an append began (mbox journal)
 *   ...one R/T pair (and O record) per recipient...
 *   M <message length in bytes>
 *   <message bytes: LF line ends, Received: header first>
 *
 * Record values never contain LF (the SMTP parser refuses them). The status
 * byte of each R record is rewritten in place when a delivery completes, the
 * value of an O record before an mbox append starts (files written before O
 * records existed have none and parse as before).
 * All functions here do blocking I/O: call them from a worker thread, or at
 * start-up. */
#pragma once
#include <glib.h>
#include "settings.h"

#define GM_SPOOL_ERROR (gm_spool_error_quark ())
GQuark gm_spool_error_quark (void);

typedef enum
{
  GM_SPOOL_ERROR_IO,            /* any I/O failure: 451 4.3.0 */
  GM_SPOOL_ERROR_NO_SPACE,      /* ENOSPC or EDQUOT: 452 4.3.1 */
  GM_SPOOL_ERROR_CORRUPT,       /* a queue file that does not parse */
} GmSpoolError;

typedef enum
{
  GM_RCPT_PENDING = 'P',
  GM_RCPT_DELIVERED = 'D',
  GM_RCPT_FAILED = 'F',
} GmRcptStatus;

typedef struct
{
  char *address;                /* without angle brackets */
  GmTransport transport;
  char *destination;            /* absolute path: Maildir directory or mbox file */
  GmRcptStatus status;
  goffset status_offset;        /* of the status byte in the queue file (set by read and write) */
  gint64 append_start;          /* mbox: offset where an unfinished append began, or -1 */
  goffset append_offset;        /* of the O record's value in the file, 0 when it has none */
} GmSpoolRcpt;

typedef struct
{
  char *id;
  gint64 arrival;               /* unix seconds */
  char *client;
  char *helo;
  char *protocol;
  char *sender;                 /* "" for the null sender */
  GPtrArray *rcpts;             /* of GmSpoolRcpt*, owned */
  char *quarantine;             /* not NULL: gm_spool_write stores it in quarantine/NAME/ (not in the file) */
  char queued_rules;            /* the Q record: 0 (none), GM_RCPT_PENDING or GM_RCPT_DELIVERED */
  goffset queued_offset;        /* of its status byte (set by read and write) */
} GmEnvelope;

GmEnvelope *gm_envelope_new (void);
void gm_envelope_free (GmEnvelope *env);
void gm_envelope_add_rcpt (GmEnvelope *env, const char *address, GmTransport transport,
                           const char *destination);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GmEnvelope, gm_envelope_free)

/* Create the spool directories under STATE_DIR if missing. */
gboolean gm_spool_init (const char *state_dir, GError **error);

/* A new queue id: unique in this spool, fixed width, sorting by arrival. Thread-safe. */
char *gm_spool_new_id (void);
/* The time an id was made, in microseconds since the epoch (ids are that
 * time in hexadecimal, made strictly increasing), or -1 for a malformed id. */
gint64 gm_spool_id_time (const char *id);

/* Write ENV plus the message (HEADER then BODY, concatenated) durably into
 * queue/ENV->id. Fills each recipient's status_offset. Thread-safe. On failure
 * nothing is left in incoming/ or queue/. */
gboolean gm_spool_write (const char *state_dir, GmEnvelope *env,
                         const char *header, gsize header_len,
                         const char *body, gsize body_len, GError **error);

/* The records that start the queue file of ENV with a message of
 * MESSAGE_LEN bytes: what gm_spool_write writes before the message (and
 * gm_spool_parse reads back). Fills each recipient's status_offset. NULL with
 * GM_SPOOL_ERROR_IO when ENV cannot be spooled (bad id, LF in a field,
 * relative destination...). For gm_spool_write, tests and fuzz targets. */
GString *gm_spool_format (GmEnvelope *env, gsize message_len, GError **error);

/* An open queue file, for delivery. */
typedef struct
{
  int fd;
  char *path;
  GmEnvelope *env;
  char *message;                /* the message bytes, owned */
  gsize message_len;
} GmQueueFile;

/* Open and parse queue/ID. A file that does not parse gives GM_SPOOL_ERROR_CORRUPT. */
GmQueueFile *gm_queue_file_open (const char *state_dir, const char *id, GError **error);
/* Rewrite recipient INDEX's status byte in place (no fsync). */
gboolean gm_queue_file_mark (GmQueueFile *qf, guint index, GmRcptStatus status, GError **error);
/* Record that the queued rules ran (the Q record, in place, no fsync). */
gboolean gm_queue_file_mark_queued (GmQueueFile *qf, GError **error);
/* Write the file again from QF's envelope (changed by queued rules) and
 * message, durably, replacing it: a crash leaves the old or the new file. */
gboolean gm_queue_file_rewrite (GmQueueFile *qf, GError **error);
/* Move the file into quarantine/NAME/, durably. */
gboolean gm_queue_file_quarantine (GmQueueFile *qf, const char *name, GError **error);
/* Record durably (in place, then fdatasync) that an append to recipient
 * INDEX's mbox starts at OFFSET. The recipient must have an O record. */
gboolean gm_queue_file_note_append (GmQueueFile *qf, guint index, gint64 offset, GError **error);
/* fdatasync the file: makes marks durable. */
gboolean gm_queue_file_sync (GmQueueFile *qf, GError **error);
/* Remove the queue file from queue/ (when every recipient is done). */
gboolean gm_queue_file_remove (GmQueueFile *qf, GError **error);
void gm_queue_file_close (GmQueueFile *qf);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (GmQueueFile, gm_queue_file_close)

/* Parse a whole queue file held in memory (LEN bytes at DATA): for tests and
 * fuzz targets. On success *MESSAGE_OFFSET (may be NULL) is where the message
 * starts; it runs to the end. Anything malformed is GM_SPOOL_ERROR_CORRUPT. */
GmEnvelope *gm_spool_parse (const char *data, gsize len, gsize *message_offset, GError **error);

/* Start-up recovery: remove incoming/ leftovers (never acknowledged), move
 * queue files that do not parse into corrupt/ (logged), and return the ids in
 * queue/ in sorted order (a GPtrArray of char*, free with g_ptr_array_unref). */
GPtrArray *gm_spool_recover (const char *state_dir, GError **error);
