/* workers.c — a GThreadPool whose results come back to the main loop.
 *
 * Disk writes and fsyncs overlap across messages here (group commit); the
 * main loop never blocks on them. */
#include "config.h"
#include "workers.h"

typedef struct
{
  GmWorkFunc work;
  GmWorkFunc done;
  gpointer data;
} Job;

static GThreadPool *pool;
static guint pending;           /* main-thread only */

static gboolean
job_done (gpointer user_data)
{
  Job *job = user_data;
  pending--;
  if (job->done)
    job->done (job->data);
  g_free (job);
  return G_SOURCE_REMOVE;
}

static void
job_run (gpointer job_ptr, gpointer unused)
{
  Job *job = job_ptr;
  job->work (job->data);
  g_idle_add_full (G_PRIORITY_DEFAULT, job_done, job, NULL);
}

void
gm_workers_init (guint n_threads)
{
  g_autoptr (GError) error = NULL;
  pool = g_thread_pool_new (job_run, NULL, (gint) n_threads, FALSE, &error);
  if (!pool)
    g_error ("cannot start worker threads: %s", error->message);
}

void
gm_workers_push (GmWorkFunc work, GmWorkFunc done, gpointer data)
{
  Job *job = g_new (Job, 1);
  *job = (Job) { work, done, data };
  pending++;
  g_thread_pool_push (pool, job, NULL);
}

guint
gm_workers_pending (void)
{
  return pending;
}

void
gm_workers_shutdown (void)
{
  if (!pool)
    return;
  g_thread_pool_free (pool, FALSE, TRUE);
  pool = NULL;
  while (pending > 0)
    g_main_context_iteration (NULL, TRUE);
}
