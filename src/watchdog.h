/* watchdog.h — the time limit of rules (#:rule-time-limit) without a system
 * call per stage. */
#pragma once
#include <glib.h>

/* Once, on the main thread: start the watching thread. */
void gm_watchdog_start (void);
/* The main thread starts and stops running a stage's Scheme code. */
void gm_watchdog_enter (void);
void gm_watchdog_leave (void);
/* On the main thread: has the code running now run past the limit? */
gboolean gm_watchdog_overdue (void);
