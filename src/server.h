/* server.h — listeners, connections and the main loop. */
#pragma once
#include <glib.h>
#include "smtp-session.h"

/* Bind every configured listen address. Fails with a message naming the address. */
gboolean gm_server_listen (GError **error);
/* Run until SIGTERM/SIGINT and the graceful shutdown that follows. */
int gm_server_run (void);

/* The live connections, for the REPL's (sessions). */
typedef struct
{
  GmSession *session;
  const char *state;            /* "idle", "transaction", "data", "busy", "closing" */
  gint64 connected;             /* µs since the connection was accepted */
  gint64 idle;                  /* µs since the client last sent something */
} GmServerSessionInfo;

typedef void (*GmServerSessionFunc) (const GmServerSessionInfo *info, gpointer data);

/* Call FUNC for each live connection, oldest first. */
void gm_server_foreach_session (GmServerSessionFunc func, gpointer data);
