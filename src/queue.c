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
#include "policy.h"
#include "settings.h"
#include "spool.h"
#include "workers.h"

typedef struct
{
  char *id;
  char *state_dir, *hostname;   /* copies: a reload replaces gm_config's strings */
  guint max_queue_lifetime;
  guint stages;                 /* queued and delivery rules, when the attempt started */
  /* With such rules a worker opens the file, the rules run on the main
   * thread, then a worker applies their verdicts and delivers. */
  GmQueueFile *qf;
  GmPolicyMessage *policy;
  gboolean queued_ran;          /* the queued rules ran in this attempt */
  GmVerdict queued;             /* their verdict */
  GmVerdict *decisions;         /* the delivery rules' verdict per recipient, or NULL */
  gboolean *rerouted;           /* per recipient: its delivery rules chose another mailbox */
  guint n_decisions;
  guint next_rcpt;              /* the delivery rules' progress */
  char *destination;            /* the recipient's recorded mailbox, while its rules run */
  /* Filled by the worker. */
  guint pending;                /* recipients still to do */
  gboolean corrupt;
} Delivery;

static GQueue ready = G_QUEUE_INIT;             /* of char* ids */
static GHashTable *known;                       /* id -> attempts (GUINT_TO_POINTER) */
static guint active;
static gboolean stopped;

#define MESSAGE_STAGES ((1u << GM_STAGE_QUEUED) | (1u << GM_STAGE_DELIVERY))

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


/* Worker thread: open and read the queue file, once per attempt. */
static gboolean
open_queue_file (Delivery *d)
{
  if (d->qf)
    return TRUE;
  g_autoptr (GError) error = NULL;
  d->qf = gm_queue_file_open (d->state_dir, d->id, &error);
  if (d->qf)
    return TRUE;
  d->corrupt = g_error_matches (error, GM_SPOOL_ERROR, GM_SPOOL_ERROR_CORRUPT);
  /* A corrupt file is moved to corrupt/ by the next start's recovery;
   * anything else (EMFILE, ENOMEM, ...) is retried like a failed delivery. */
  gm_log (d->id, "cannot open queue file: %s%s", error->message,
          d->corrupt ? " (left for recovery at next start)" : " (will retry)");
  d->pending = d->corrupt ? 0 : 1;
  return FALSE;
}

/* Every recipient is done: the file goes (logged). */
static void
remove_queue_file (GmQueueFile *qf)
{
  g_autoptr (GError) error = NULL;
  if (!gm_queue_file_remove (qf, &error))
    gm_log (qf->env->id, "cannot remove queue file: %s", error->message);
  else
    gm_log (qf->env->id, "removed");
}

static char *
policy_detail (const GmVerdict *v)
{
  return g_strdup_printf ("by policy: %u %s %s", v->code, v->esc, v->text ? v->text : "");
}

/* Worker thread: what the queued rules decided other than delivery. TRUE
 * when the message goes on to delivery. */
static gboolean
apply_queued_verdict (Delivery *d)
{
  GmQueueFile *qf = d->qf;
  GmEnvelope *env = qf->env;
  g_autoptr (GError) error = NULL;
  if (!d->queued_ran)
    return TRUE;
  switch (d->queued.kind)
    {
    case GM_VERDICT_NEXT:
    case GM_VERDICT_ACCEPT:
      /* Changes take effect only now that the message goes on; either way
       * the Q record says the rules ran. */
      if (gm_policy_message_changed (d->policy) ? !gm_queue_file_rewrite (qf, &error)
          : !gm_queue_file_mark_queued (qf, &error))
        {
          gm_log (env->id, "cannot record the queued rules' changes: %s (will retry)",
                  error->message);
          d->pending = 1;
          return FALSE;
        }
      return TRUE;
    case GM_VERDICT_DEFER:
      {
        /* The queued rules run again at the next attempt. */
        g_autofree char *detail = policy_detail (&d->queued);
        gm_log (env->id, "deferred %s", detail);
        d->pending = 1;
        return FALSE;
      }
    case GM_VERDICT_QUARANTINE:
      if (!gm_queue_file_quarantine (qf, d->queued.text, &error))
        {
          gm_log (env->id, "cannot quarantine: %s (will retry)", error->message);
          d->pending = 1;
        }
      else
        gm_log (env->id, "quarantined by policy: quarantine=%s", d->queued.text);
      return FALSE;
    case GM_VERDICT_DISCARD:
    case GM_VERDICT_REJECT:
      {
        g_autofree char *detail = policy_detail (&d->queued);
        for (guint i = 0; i < env->rcpts->len; i++)
          {
            GmSpoolRcpt *r = g_ptr_array_index (env->rcpts, i);
            if (r->status == GM_RCPT_PENDING && d->queued.kind == GM_VERDICT_REJECT)
              gm_log (env->id, "to=<%s>, relay=none, status=bounced (rejected %s)", r->address,
                      detail);
          }
        if (d->queued.kind == GM_VERDICT_DISCARD)
          gm_log (env->id, "discarded by policy (queued stage)");
        remove_queue_file (qf);
        return FALSE;
      }
    }
  return FALSE;
}

/* Deliver every pending recipient of D's open queue file. */
static void
deliver_recipients (Delivery *d)
{
  GmQueueFile *qf = d->qf;
  g_autoptr (GError) error = NULL;
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
      /* The O record journals appends to the recorded mbox, not to another. */
      gboolean rerouted = d->rerouted && d->rerouted[i];
      GmMboxJournal journal = { r->append_start, record_append, &journal_data };
      GmDeliveryInfo info = { env->id, i, env->arrival, env->sender, r->address,
                              d->hostname, r->append_offset && !rerouted ? &journal : NULL };
      const GmVerdict *decision = d->decisions ? &d->decisions[i] : NULL;
      GmVerdictKind kind = decision ? decision->kind : GM_VERDICT_NEXT;
      g_autofree char *detail = NULL;
      GmDeliveryResult result;
      const char *status = NULL;
      if (kind == GM_VERDICT_REJECT || kind == GM_VERDICT_DEFER)
        {
          result = kind == GM_VERDICT_REJECT ? GM_DELIVERY_PERMFAIL : GM_DELIVERY_TEMPFAIL;
          g_autofree char *why = policy_detail (decision);
          detail = g_strdup_printf ("%s %s", kind == GM_VERDICT_REJECT ? "rejected" : "deferred",
                                    why);
        }
      else if (kind == GM_VERDICT_DISCARD)
        {
          result = GM_DELIVERY_OK;
          status = "discarded";
          detail = g_strdup ("by policy");
        }
      else if (r->transport == GM_TRANSPORT_MAILDIR)
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
      if (!status)
        status = result == GM_DELIVERY_OK ? "sent"
          : result == GM_DELIVERY_TEMPFAIL ? "deferred" : "bounced";
      gboolean delivered = result == GM_DELIVERY_OK && kind != GM_VERDICT_DISCARD;
      double delay = MAX (0, g_get_real_time () - arrived) / 1e6;
      gm_log (env->id, "to=<%s>, relay=%s, delay=%.3f, status=%s (%s%s%s)", r->address,
              kind == GM_VERDICT_NEXT || kind == GM_VERDICT_ACCEPT ? transport_name (r->transport)
              : "policy", delay, status, delivered ? "delivered to " : "",
              delivered ? r->destination : "", detail ? detail : "");
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
       * records, or an mbox chosen by delivery rules) is not idempotent:
       * make the mark durable before the next step. Maildir names and
       * journaled appends are, so their marks may wait. */
      if (delivered && r->transport == GM_TRANSPORT_MBOX && (!r->append_offset || rerouted)
          && !gm_queue_file_sync (qf, &mark_error))
        gm_log (env->id, "cannot sync queue file: %s", mark_error->message);
      else
        must_sync = TRUE;
    }
  if (d->pending == 0)
    remove_queue_file (qf);
  else if (must_sync && !gm_queue_file_sync (qf, &error))
    gm_log (env->id, "cannot sync queue file: %s", error->message);
}

/* Worker thread: one delivery attempt of one queue file. */
static void
deliver_work (gpointer data)
{
  Delivery *d = data;
  if (open_queue_file (d) && apply_queued_verdict (d))
    deliver_recipients (d);
  g_clear_pointer (&d->qf, gm_queue_file_close);
}

/* ---- Queued and delivery rules (main thread) ---- */

static void run_delivery_rules (Delivery *d);
static void deliver_done (gpointer data);

static void
open_work (gpointer data)
{
  open_queue_file (data);
}

static void
queued_decided (gpointer data, const GmVerdict *v)
{
  Delivery *d = data;
  d->queued_ran = TRUE;
  d->queued = *v;
  d->queued.text = g_strdup (v->text);
  if (v->kind == GM_VERDICT_NEXT || v->kind == GM_VERDICT_ACCEPT)
    run_delivery_rules (d);
  else
    gm_workers_push (deliver_work, deliver_done, d);
}

static void
recipient_decided (gpointer data, const GmVerdict *v)
{
  Delivery *d = data;
  GmSpoolRcpt *r = g_ptr_array_index (d->qf->env->rcpts, d->next_rcpt);
  d->rerouted[d->next_rcpt] = g_strcmp0 (r->destination, d->destination) != 0;
  GmVerdict *decision = &d->decisions[d->next_rcpt++];
  *decision = *v;
  decision->text = g_strdup (v->text);
  if (v->kind == GM_VERDICT_QUARANTINE)
    {
      gm_log (d->id, "policy error: quarantine is a verdict for a message, not for a recipient "
              "(delivery stage)");
      gm_verdict_clear (decision);
      gm_verdict_set_policy_failure (decision);
    }
  run_delivery_rules (d);
}

/* The delivery rules of each pending recipient, one after the other; then
 * a worker delivers. */
static void
run_delivery_rules (Delivery *d)
{
  GmEnvelope *env = d->qf->env;
  if (d->stages & (1u << GM_STAGE_DELIVERY))
    {
      if (!d->decisions)
        {
          d->decisions = g_new0 (GmVerdict, env->rcpts->len);
          d->rerouted = g_new0 (gboolean, env->rcpts->len);
          d->n_decisions = env->rcpts->len;
        }
      while (d->next_rcpt < env->rcpts->len)
        {
          GmSpoolRcpt *r = g_ptr_array_index (env->rcpts, d->next_rcpt);
          if (r->status != GM_RCPT_PENDING)
            {
              d->next_rcpt++;
              continue;
            }
          GmVerdict v = { 0 };
          g_free (d->destination);
          d->destination = g_strdup (r->destination);
          if (!gm_policy_message_run (d->policy, GM_STAGE_DELIVERY, d->next_rcpt, &v,
                                      recipient_decided, d))
            return;             /* recipient_decided goes on */
          recipient_decided (d, &v);
          gm_verdict_clear (&v);
          return;
        }
    }
  gm_workers_push (deliver_work, deliver_done, d);
}

/* The file is read: the queued rules run once (their Q record says whether
 * they still have to), then the delivery rules. */
static void
open_done (gpointer data)
{
  Delivery *d = data;
  if (!d->qf)
    {
      deliver_done (d);
      return;
    }
  d->policy = gm_policy_message_new (d->qf->env, d->qf->message, d->qf->message_len);
  if ((d->stages & (1u << GM_STAGE_QUEUED)) && d->qf->env->queued_rules == GM_RCPT_PENDING)
    {
      GmVerdict v = { 0 };
      if (gm_policy_message_run (d->policy, GM_STAGE_QUEUED, 0, &v, queued_decided, d))
        {
          queued_decided (d, &v);
          gm_verdict_clear (&v);
        }
      return;
    }
  run_delivery_rules (d);
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
  g_clear_pointer (&d->policy, gm_policy_message_free);
  gm_verdict_clear (&d->queued);
  if (d->decisions)
    for (guint i = 0; i < d->n_decisions; i++)
      gm_verdict_clear (&d->decisions[i]);
  g_free (d->decisions);
  g_free (d->rerouted);
  g_free (d->destination);
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
      d->stages = gm_policy_stages () & MESSAGE_STAGES;
      active++;
      if (d->stages)
        gm_workers_push (open_work, open_done, d);
      else
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
