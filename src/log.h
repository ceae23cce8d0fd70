/* log.h — one line per event, Postfix style: "QUEUEID: key=value, ..." */
#pragma once
#include <glib.h>

void gm_log_set_verbose (gboolean verbose);
gboolean gm_log_verbose (void);

/* Log one event. QUEUE_ID may be NULL for events that concern no message.
 * Safe to call from worker threads: each line is written with one write(2). */
void gm_log (const char *queue_id, const char *fmt, ...) G_GNUC_PRINTF (2, 3);

/* Send log lines ("QUEUEID: text", without time stamp and process) to WRITER
 * instead of stderr; NULL restores stderr. For tests. */
typedef void (*GmLogWriter) (const char *line);
void gm_log_set_writer (GmLogWriter writer);

/* Debug-level line, printed only when verbose. */
void gm_debug (const char *queue_id, const char *fmt, ...) G_GNUC_PRINTF (2, 3);
