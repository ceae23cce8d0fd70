/* workers.h — the pool of threads that do blocking disk work.
 *
 * Workers never see an SCM value. Each job runs WORK in a worker thread, then
 * DONE on the main loop with the same DATA. */
#pragma once
#include <glib.h>

typedef void (*GmWorkFunc) (gpointer data);

void gm_workers_init (guint n_threads);
void gm_workers_push (GmWorkFunc work, GmWorkFunc done, gpointer data);
/* Jobs queued or running (their DONE not yet run). */
guint gm_workers_pending (void);
/* Wait for every queued job, run the DONE callbacks still due, stop the threads. */
void gm_workers_shutdown (void);
