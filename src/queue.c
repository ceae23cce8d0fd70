/* queue.c — the queue manager.
 *
 * Picks queue files in arrival order, hands each to a worker thread that
 * delivers every pending recipient and records each result in place in the
 * queue file, and reschedules what failed temporarily with exponential
 * back-off (retry-min doubling up to retry-max). A message whose recipients
 * are all done is removed from queue/. After max-queue-lifetime, pending
 * recipients fail permanently (bounces come with remote delivery).
 *
 * With delivery "hold" nothing starts: the ready ids wait for a reload.
 *
 * At most half the worker threads deliver at once, so that spool writes —
 * which a client is waiting for — always find a free thread. */
#include "config.h"
#include "queue.h"

#include "deliver-local.h"
#include "log.h"
#include "settings.h"
#include "spool.h"
#include "workers.h"

typedef struct
{
  char *id;
  char *state_dir, *hostname;   /* copies: a reload replaces gm_config's strings */
  guint max_queue_lifetime;
  /* Filled by the worker. */
  guint pending;                /* recipients still to do */
  gboolean corrupt;
} Delivery;

static GQueue ready = G_QUEUE_INIT;             /* of char* ids */
static GHashTable *known;                       /* id -> attempts (GUINT_TO_POINTER) */
static guint active;
static gboolean stopped;

static guint
max_active (void)
{
  return MAX (1, gm_config.workers / 2);
}

static void kick (void);

static const char *
transport_name (GmTransport t)
{
  return t == GM_TRANSPORT_MAILDIR ? "maildir" : t == GM_TRANSPORT_MBOX ? "mbox" : "none";
}

typedef struct
{
  GmQueueFile *qf;
  guint index;
} AppendJournal;

/* GmMboxJournal's record: the offset goes into the recipient's O record. */
static gboolean
record_append (gpointer data, gint64 offset, char **detail)
{
  AppendJournal *j = data;
  g_autoptr (GError) error = NULL;
  if (gm_queue_file_note_append (j->qf, j->index, offset, &error))
    return TRUE;
  *detail = g_strdup (error->message);
  return FALSE;
}

/* Worker thread: deliver every pending recipient of one queue file. */
static void
deliver_work (gpointer data)
{
  Delivery *d = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (GmQueueFile) qf = gm_queue_file_open (d->state_dir, d->id, &error);
  if (!qf)
    {
      d->corrupt = g_error_matches (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT);
      /* A corrupt file is moved to corrupt/ by the next start's recovery;
       * anything else (EMFILE, ENOMEM, ...) is retried like a failed delivery. */
      gm_log (d->id, "cannot open queue file: %s%s", error->message,
              d->corrupt ? " (left for recovery at next start)" : " (will retry)");
      d->pending = d->corrupt ? 0 : 1;
      return;
    }
  GmEnvelope *env = qf->env;
  gint64 now = g_get_real_time ();
  gboolean expired = d->max_queue_lifetime > 0
    && now / G_USEC_PER_SEC - env->arrival > (gint64) d->max_queue_lifetime;
  /* The queue id holds the arrival time to the microsecond; the A record only
   * to the second. */
  gint64 arrived = gm_spool_id_time (env->id);
  if (arrived < 0)
    arrived = env->arrival * G_USEC_PER_SEC;
  gboolean must_sync = FALSE;

  d->pending = 0;
  for (guint i = 0; i < env->rcpts->len; i++)
    {
      GmSpoolRcpt *r = g_ptr_array_index (env->rcpts, i);
      if (r->status != GM_RCPT_PENDING)
        continue;
      AppendJournal journal_data = { qf, i };
      GmMboxJournal journal = { r->append_start, record_append, &journal_data };
      GmDeliveryInfo info = { env->id, i, env->arrival, env->sender, r->address,
                              d->hostname, r->append_offset ? &journal : NULL };
      g_autofree char *detail = NULL;
      GmDeliveryResult result;
      if (r->transport == GM_TRANSPORT_MAILDIR)
        result = gm_deliver_maildir (r->destination, &info, qf->message, qf->message_len, &detail);
      else if (r->transport == GM_TRANSPORT_MBOX)
        result = gm_deliver_mbox (r->destination, &info, qf->message, qf->message_len, &detail);
      else
        {
          result = GM_DELIVERY_PERMFAIL;
          detail = g_strdup ("no transport for this recipient");
        }
      if (result == GM_DELIVERY_TEMPFAIL && expired)
        {
          result = GM_DELIVERY_PERMFAIL;
          g_autofree char *old = detail;
          detail = g_strdup_printf ("message expired in queue: %s", old);
        }
      const char *status = result == GM_DELIVERY_OK ? "sent"
        : result == GM_DELIVERY_TEMPFAIL ? "deferred" : "bounced";
      double delay = MAX (0, g_get_real_time () - arrived) / 1e6;
      gm_log (env->id, "to=<%s>, relay=%s, delay=%.3f, status=%s (%s%s%s)", r->address,
              transport_name (r->transport), delay, status,
              result == GM_DELIVERY_OK ? "delivered to " : "",
              result == GM_DELIVERY_OK ? r->destination : "", detail ? detail : "");
      if (result == GM_DELIVERY_TEMPFAIL)
        {
          d->pending++;
          continue;
        }
      g_autoptr (GError) mark_error = NULL;
      if (!gm_queue_file_mark (qf, i, result == GM_DELIVERY_OK ? GM_RCPT_DELIVERED : GM_RCPT_FAILED,
                               &mark_error))
        {
          gm_log (env->id, "cannot record delivery: %s", mark_error->message);
          d->pending++;
          continue;
        }
      /* An mbox append without a journal (a queue file older than O
       * records) is not idempotent: make the mark durable before the next
       * step. Maildir names and journaled appends are, so their marks may wait. */
      if (r->transport == GM_TRANSPORT_MBOX && !r->append_offset
          && !gm_queue_file_sync (qf, &mark_error))
        gm_log (env->id, "cannot sync queue file: %s", mark_error->message);
      else
        must_sync = TRUE;
    }
  if (d->pending == 0)
    {
      if (!gm_queue_file_remove (qf, &error))
        gm_log (env->id, "cannot remove queue file: %s", error->message);
      else
        gm_log (env->id, "removed");
    }
  else if (must_sync && !gm_queue_file_sync (qf, &error))
    gm_log (env->id, "cannot sync queue file: %s", error->message);
}

static gboolean
retry_due (gpointer data)
{
  char *id = data;
  g_queue_push_tail (&ready, id);
  kick ();
  return G_SOURCE_REMOVE;
}

/* Main loop: a delivery attempt finished. */
static void
deliver_done (gpointer data)
{
  Delivery *d = data;
  active--;
  g_free (d->state_dir);
  g_free (d->hostname);
  if (d->pending == 0 || d->corrupt)
    {
      g_hash_table_remove (known, d->id);
      g_free (d->id);
    }
  else
    {
      guint attempts = GPOINTER_TO_UINT (g_hash_table_lookup (known, d->id)) + 1;
      g_hash_table_insert (known, g_strdup (d->id), GUINT_TO_POINTER (attempts));
      guint64 delay = gm_config.retry_min;
      for (guint i = 1; i < attempts && delay < gm_config.retry_max; i++)
        delay *= 2;
      delay = MIN (delay, gm_config.retry_max);
      gm_log (d->id, "deferred: %u recipient(s) pending, next attempt in %" G_GUINT64_FORMAT "s",
              d->pending, delay);
      g_timeout_add_seconds_full (G_PRIORITY_DEFAULT, (guint) delay, retry_due, d->id, NULL);
    }
  g_free (d);
  kick ();
}

static void
kick (void)
{
  while (!stopped && gm_config.delivery == GM_QUEUE_RUN && active < max_active ()
         && !g_queue_is_empty (&ready))
    {
      Delivery *d = g_new0 (Delivery, 1);
      d->id = g_queue_pop_head (&ready);
      d->state_dir = g_strdup (gm_config.state_dir);
      d->hostname = g_strdup (gm_config.hostname);
      d->max_queue_lifetime = gm_config.max_queue_lifetime;
      active++;
      gm_workers_push (deliver_work, deliver_done, d);
    }
}

void
gm_queue_submit (const char *id)
{
  if (!known)
    known = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  if (g_hash_table_contains (known, id))
    return;
  g_hash_table_insert (known, g_strdup (id), GUINT_TO_POINTER (0));
  g_queue_push_tail (&ready, g_strdup (id));
  kick ();
}

gboolean
gm_queue_start (GError **error)
{
  g_autoptr (GPtrArray) ids = gm_spool_recover (gm_config.state_dir, error);
  if (!ids)
    return FALSE;
  if (ids->len > 0)
    gm_log (NULL, "queue: resuming %u message(s)", ids->len);
  if (gm_config.delivery == GM_QUEUE_HOLD)
    gm_log (NULL, "queue: delivery is on hold (#:delivery hold)");
  for (guint i = 0; i < ids->len; i++)
    gm_queue_submit (g_ptr_array_index (ids, i));
  return TRUE;
}

void
gm_queue_settings_changed (void)
{
  kick ();
}

void
gm_queue_stop (void)
{
  stopped = TRUE;
}

guint
gm_queue_active (void)
{
  return active;
}
