/* server.h — listeners, connections and the main loop. */
#pragma once
#include <glib.h>

/* Bind every configured listen address. Fails with a message naming the address. */
gboolean gm_server_listen (GError **error);
/* Run until SIGTERM/SIGINT and the graceful shutdown that follows. */
int gm_server_run (void);
