/* dns.h — DNS lookups that policy rules wait for (the "dns" operation).
 *
 * A rule calls (dns-lookup NAME TYPE) from (guillemot dns); that suspends it
 * with (suspend 'dns NAME TYPE), and dns.c resolves NAME with libunbound
 * without blocking the main loop, then resumes the rule with the answer. */
#pragma once
#include <glib.h>

/* The values of gm_config.dns_resolver, in the order of the setting's choices. */
typedef enum
{
  GM_DNS_SYSTEM,                /* /etc/resolv.conf and /etc/hosts */
  GM_DNS_FORWARD,               /* the dns-forwarders */
  GM_DNS_RECURSIVE,             /* from the root hints */
} GmDnsResolver;

#define GM_DNS_ERROR (gm_dns_error_quark ())
GQuark gm_dns_error_quark (void);

/* Once, after gm_policy_init() (main thread, in Guile mode): set up the
 * resolver from the dns-* settings and register the "dns" operation.
 * FALSE with ERROR when a setting cannot be used: a forwarder that is not an
 * address, a local-data record or local zone that unbound refuses. */
gboolean gm_dns_init (GError **error);
