/* scm-config.h — the (guillemot core) primitives behind define-server and
 * friends, and loading a configuration file. Main thread only. */
#pragma once
#include <glib.h>

/* Register (guillemot core) and make the Scheme modules findable.
 * Call once, inside scm_with_guile. */
void gm_scm_init_config (void);

/* Evaluate the configuration FILE. On error returns FALSE with a message
 * "FILE:LINE:COLUMN: what was wrong". */
gboolean gm_scm_load_config (const char *file, GError **error);
