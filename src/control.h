/* control.h — loading and reloading the configuration, and the control
 * directory STATE-DIR/control/ (0700): control.sock answers `guillemot
 * reload`, repl.sock is the administrator's Guile REPL. Main thread only. */
#pragma once
#include <glib.h>
#include "smtp-session.h"

/* Reset the settings to their defaults, evaluate FILE, apply OVERRIDES
 * (NULL-terminated "KEY=VALUE" of --set), check the result and make
 * state-dir absolute. FALSE with the message to show: "FILE:LINE:COLUMN:
 * ..." for an error in the file. The rules the file declares are collected
 * in (guillemot), not installed. */
gboolean gm_control_load (const char *file, const char *const *overrides, GError **error);

/* serve, before listening: remember FILE and OVERRIDES for reloads, create
 * STATE-DIR/control/ with control.sock and repl.sock (0600), define the
 * REPL's primitives in (guillemot core) and poll the REPL every 50 ms. Fails
 * when the directory cannot be made private or another server answers on
 * its sockets. */
gboolean gm_control_start (const char *file, const char *const *overrides, GError **error);

/* At exit: close the sockets and remove them. */
void gm_control_stop (void);

/* Load the configuration file again, with the same overrides; ORIGIN
 * ("SIGHUP", "control.sock", "REPL") is logged. On success the new rules
 * are installed for sessions that start from now on and the new settings
 * apply, except listen, state-dir, workers and the dns-* resolver settings,
 * which keep their running values with a warning; *REPORT (when REPORT is
 * not NULL) gets "reloaded FILE: N rules" and the warnings, one per line. On
 * failure nothing changes: the settings are restored exactly and the rules
 * in force stay; *ERROR has the message. Both outcomes are logged. */
gboolean gm_control_reload (const char *origin, char **report, GError **error);

/* The client subcommands, given the state directory of the server. */
int gm_control_client_reload (const char *state_dir);   /* exit status */
int gm_control_client_repl (const char *state_dir);     /* exit status */
