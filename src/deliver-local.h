/* deliver-local.h — local delivery into Maildir and mbox.
 *
 * Both add "Return-Path: <sender>" and "Delivered-To: recipient" on top of the
 * message and leave no partial message behind on failure. Blocking: call from
 * a worker thread. */
#pragma once
#include <glib.h>

typedef enum
{
  GM_DELIVERY_OK,
  GM_DELIVERY_TEMPFAIL,         /* retry later: permissions, ENOSPC, lock busy, ... */
  GM_DELIVERY_PERMFAIL,         /* never going to work */
} GmDeliveryResult;

/* Where an mbox append starts, kept by the caller (in the queue file) so that
 * the attempt after a crash can tell what the interrupted one left. */
typedef struct
{
  gint64 previous;              /* offset an earlier attempt recorded, or -1 */
  /* Make "the append starts at OFFSET" durable; FALSE with *DETAIL set on
   * failure (the delivery is then deferred). */
  gboolean (*record) (gpointer data, gint64 offset, char **detail);
  gpointer data;
} GmMboxJournal;

typedef struct
{
  const char *queue_id;
  guint rcpt_index;             /* makes the Maildir file name unique per recipient */
  gint64 arrival;               /* unix seconds */
  const char *sender;           /* "" for the null sender */
  const char *recipient;
  const char *hostname;
  const GmMboxJournal *journal; /* mbox only; NULL: no journal */
} GmDeliveryInfo;

/* Deliver MESSAGE (LF line ends) into the Maildir DIR, creating DIR, DIR/tmp,
 * DIR/new and DIR/cur when missing. The file name is derived from the queue id
 * and recipient index, so a delivery repeated after a crash finds the file
 * already in new/ (or cur/) and does not duplicate it. On failure *DETAIL
 * says why. */
GmDeliveryResult gm_deliver_maildir (const char *dir, const GmDeliveryInfo *info,
                                     const char *message, gsize len, char **detail);

/* Append MESSAGE to the mbox FILE in mboxrd form ("From " line, ">From"
 * quoting, blank line after), under an fcntl lock and a FILE.lock dot-lock,
 * fsynced. On failure the file is truncated back to its previous size. With
 * INFO->journal, the offset of the append is recorded before it starts; an
 * attempt that finds a recorded offset first looks there: the whole entry
 * means done (no duplicate), a partial one at the end of the file is cut off
 * before appending again. */
GmDeliveryResult gm_deliver_mbox (const char *file, const GmDeliveryInfo *info,
                                  const char *message, gsize len, char **detail);
