/* queue.h — the queue manager: delivers spooled messages, retries, records progress. */
#pragma once
#include <glib.h>

/* Recover the spool (DESIGN.md §5) and schedule every queued message. */
gboolean gm_queue_start (GError **error);
/* A message was just spooled: deliver it. */
void gm_queue_submit (const char *id);
/* A reload changed the settings: start what delivery "hold" kept back. */
void gm_queue_settings_changed (void);
/* Start no new deliveries; running ones finish. */
void gm_queue_stop (void);
/* Deliveries running now. */
guint gm_queue_active (void);
