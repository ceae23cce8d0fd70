/* test-session.h — guillemot test-session: a dry run of the SMTP session and the rules. */
#pragma once
#include <glib.h>

/* Feed the client lines of INPUT (a file, or stdin when NULL) to a session
 * from CLIENT ("ADDR:PORT" or "[V6]:PORT") to LOCAL, with the loaded rules;
 * print each line, reply, rule verdict and time, and what would be queued.
 * No network, no spool, no delivery. Returns the exit status. */
int gm_test_session_run (const char *input, const char *client, const char *local);
