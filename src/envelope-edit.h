/* envelope-edit.h — changing an envelope the way rules do: the same routing
 * and checks whether the message is still in its SMTP session or already in
 * the queue.
 *
 * Addresses are given without angle brackets; on FALSE, *REASON says why
 * (a static string). */
#pragma once
#include <glib.h>
#include "spool.h"

/* A local part as a directory or file name, lower-cased; NULL when it could
 * escape its directory (empty, leading dot or quote, '/', control bytes). */
char *gm_mailbox_name (const char *local);
gboolean gm_is_local_domain (const char *domain);

/* The address as the SMTP parser would store it (canonical form), or NULL. */
char *gm_envelope_canonical_sender (const char *address, const char **reason);

gboolean gm_envelope_set_sender (GmEnvelope *env, const char *address, const char **reason);
/* Add a recipient routed like one given with RCPT (a local domain, to the
 * deliver-local mailbox); one already there is not added again. */
gboolean gm_envelope_add_recipient (GmEnvelope *env, const char *address, const char **reason);
/* TRUE when ADDRESS was a recipient. */
gboolean gm_envelope_remove_recipient (GmEnvelope *env, const char *address);
/* Deliver recipient ADDRESS into TRANSPORT at TEMPLATE ("~a": its local part). */
gboolean gm_envelope_set_mailbox (GmEnvelope *env, const char *address, GmTransport transport,
                                  const char *template, const char **reason);
GmSpoolRcpt *gm_envelope_find_recipient (const GmEnvelope *env, const char *address,
                                         guint *index);
