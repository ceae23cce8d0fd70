/* dns.c — DNS lookups for policy rules: libunbound driven by the GLib main
 * loop (DESIGN.md §2, "Policy calls suspend, not block").
 *
 * One ub_ctx, in libunbound's threaded asynchronous mode: its own thread
 * talks to the name servers and hands answers back through a pipe, ub_fd(),
 * which the main loop watches; when it is readable ub_process() calls back
 * on the main thread. A rule's (suspend 'dns NAME TYPE) starts one
 * ub_resolve_async() and a GLib timer (dns-timeout); whichever comes first
 * resumes the rule, the other is cancelled. The main thread never waits for
 * the network, and a waiting rule costs a Lookup here plus its continuation.
 *
 * What the rule gets (doc/dns.texi "DNS lookups"):
 *   a, aaaa  the addresses as text                     (RFC 1035 §3.4.1, RFC 3596 §2.2)
 *   mx       (PREFERENCE . HOST) pairs, lowest first   (RFC 1035 §3.3.9; RFC 7505 null MX)
 *   txt      one string per record, its character-strings joined
 *                                                      (RFC 1035 §3.3.14, RFC 7208 §3.3)
 *   ptr      host names                                (RFC 1035 §3.3.12)
 *   '()      the name does not exist, or has no record of TYPE
 *   'timeout no answer within dns-timeout
 *   'servfail any other failure (SERVFAIL, REFUSED, DNSSEC bogus, local error)
 * Host names are lower case, without the trailing dot (the root is "."). */
#include "config.h"
#include "dns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <glib-unix.h>
#include <libguile.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unbound.h>

#include "log.h"
#include "policy.h"
#include "settings.h"

G_DEFINE_QUARK (gm-dns-error-quark, gm_dns_error)

typedef enum { TYPE_A = 1, TYPE_PTR = 12, TYPE_MX = 15, TYPE_TXT = 16, TYPE_AAAA = 28 } RrType;

typedef struct
{
  const char *name;             /* the Scheme symbol */
  RrType rrtype;
} DnsType;

static const DnsType types[] = {
  { "a", TYPE_A }, { "aaaa", TYPE_AAAA }, { "mx", TYPE_MX }, { "txt", TYPE_TXT }, { "ptr", TYPE_PTR },
};

enum { CLASS_IN = 1 };
enum { RCODE_NOERROR = 0, RCODE_NXDOMAIN = 3 };

/* One rule waiting for one answer. */
typedef struct
{
  GmPolicyWait *wait;
  char *name;                   /* as asked, for the log */
  const DnsType *type;
  int async_id;                 /* unbound's query, while it runs */
  guint timer;                  /* dns-timeout */
  guint idle;                   /* an answer known without asking: given from the main loop */
  gboolean early_failure;       /* that answer is 'servfail rather than '() */
  gint64 started;               /* monotonic, microseconds */
  int err;                      /* from unbound's callback */
  struct ub_result *result;
} Lookup;

static struct ub_ctx *ctx;
static gboolean thread_started;
static GQueue answered = G_QUEUE_INIT;   /* Lookups called back by ub_process() */

/* ---- Answers as Scheme values ------------------------------------------ */

static SCM
text_to_scm (const char *p, gsize len)
{
  if (g_utf8_validate (p, len, NULL))
    return scm_from_utf8_stringn (p, len);
  return scm_from_latin1_stringn (p, len);   /* other bytes kept one to one */
}

/* The uncompressed wire-format name at P (LEN bytes available) as text:
 * lower case, no trailing dot, "." for the root, unusual bytes escaped as in
 * zone files (\. \\ \DDD). NULL when malformed. */
static char *
wire_name (const guint8 *p, gsize len)
{
  GString *out = g_string_new (NULL);
  gsize i = 0;
  while (i < len && p[i] != 0)
    {
      guint label = p[i++];
      if (label > 63 || i + label > len)
        goto bad;               /* a compression pointer, or truncated */
      if (out->len > 0)
        g_string_append_c (out, '.');
      for (guint j = 0; j < label; j++, i++)
        {
          guint8 c = p[i];
          if (c == '.' || c == '\\')
            g_string_append_printf (out, "\\%c", c);
          else if (c <= 0x20 || c >= 0x7f)
            g_string_append_printf (out, "\\%03u", c);
          else
            g_string_append_c (out, g_ascii_tolower (c));
        }
      if (out->len > 1024)
        goto bad;
    }
  if (i >= len)
    goto bad;                   /* no terminating root label */
  if (out->len == 0)
    g_string_append_c (out, '.');
  return g_string_free (out, FALSE);
bad:
  g_string_free (out, TRUE);
  return NULL;
}

typedef struct
{
  guint16 preference;
  char *host;
} Mx;

static gint
mx_compare (gconstpointer a, gconstpointer b)
{
  const Mx *x = a, *y = b;
  if (x->preference != y->preference)
    return x->preference < y->preference ? -1 : 1;
  return strcmp (x->host, y->host);
}

static SCM
mx_list (const struct ub_result *r, const char *name)
{
  GArray *mxs = g_array_new (FALSE, FALSE, sizeof (Mx));
  for (int i = 0; r->data[i]; i++)
    {
      const guint8 *p = (const guint8 *) r->data[i];
      Mx mx = { 0, NULL };
      if (r->len[i] >= 3)
        {
          mx.preference = (guint16) (p[0] << 8 | p[1]);
          mx.host = wire_name (p + 2, r->len[i] - 2);
        }
      if (!mx.host)
        {
          gm_debug (NULL, "dns: %s/mx: malformed record skipped", name);
          continue;
        }
      g_array_append_val (mxs, mx);
    }
  g_array_sort (mxs, mx_compare);
  SCM list = SCM_EOL;
  for (guint i = mxs->len; i > 0; i--)
    {
      Mx *mx = &g_array_index (mxs, Mx, i - 1);
      list = scm_cons (scm_cons (scm_from_uint16 (mx->preference),
                                 scm_from_utf8_string (mx->host)), list);
      g_free (mx->host);
    }
  g_array_free (mxs, TRUE);
  return list;
}

/* One string per record: its character-strings joined without separator. */
static SCM
txt_text (const guint8 *p, gsize len)
{
  GString *text = g_string_sized_new (len);
  gsize i = 0;
  while (i < len)
    {
      gsize n = p[i++];
      if (i + n > len)
        {
          g_string_free (text, TRUE);
          return SCM_BOOL_F;
        }
      g_string_append_len (text, (const char *) p + i, n);
      i += n;
    }
  SCM s = text_to_scm (text->str, text->len);
  g_string_free (text, TRUE);
  return s;
}

static SCM
record_value (const DnsType *type, const guint8 *p, gsize len)
{
  char buf[INET6_ADDRSTRLEN];
  switch (type->rrtype)
    {
    case TYPE_A:
      return len == 4 && inet_ntop (AF_INET, p, buf, sizeof buf) ? scm_from_utf8_string (buf)
        : SCM_BOOL_F;
    case TYPE_AAAA:
      return len == 16 && inet_ntop (AF_INET6, p, buf, sizeof buf) ? scm_from_utf8_string (buf)
        : SCM_BOOL_F;
    case TYPE_TXT:
      return txt_text (p, len);
    case TYPE_PTR:
      {
        char *host = wire_name (p, len);
        SCM s = host ? scm_from_utf8_string (host) : SCM_BOOL_F;
        g_free (host);
        return s;
      }
    default:
      return SCM_BOOL_F;
    }
}

static SCM
failure (const Lookup *l, const char *value, const char *why)
{
  gm_debug (NULL, "dns: %s/%s: %s (%s) after %" G_GINT64_FORMAT " ms", l->name, l->type->name,
            value, why, (g_get_monotonic_time () - l->started) / 1000);
  return scm_from_utf8_symbol (value);
}

static const char *
rcode_name (int rcode)
{
  static const char *const names[] = { "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN",
                                       "NOTIMP", "REFUSED" };
  return rcode >= 0 && rcode < (int) G_N_ELEMENTS (names) ? names[rcode] : "rcode";
}

/* What the rule gets for the answer of L. */
static SCM
answer_value (const Lookup *l)
{
  const struct ub_result *r = l->result;
  if (l->err)
    return failure (l, "servfail", ub_strerror (l->err));
  if (r->bogus)
    return failure (l, "servfail", r->why_bogus ? r->why_bogus : "DNSSEC validation failed");
  if (r->rcode == RCODE_NXDOMAIN || (r->rcode == RCODE_NOERROR && !r->havedata))
    return SCM_EOL;
  if (r->rcode != RCODE_NOERROR)
    {
      g_autofree char *why = g_strdup_printf ("%s, rcode %d", rcode_name (r->rcode), r->rcode);
      return failure (l, "servfail", why);
    }
  if (l->type->rrtype == TYPE_MX)
    return mx_list (r, l->name);
  SCM list = SCM_EOL;
  for (int i = 0; r->data[i]; i++)
    {
      SCM v = record_value (l->type, (const guint8 *) r->data[i], r->len[i]);
      if (scm_is_false (v))
        gm_debug (NULL, "dns: %s/%s: malformed record skipped", l->name, l->type->name);
      else
        list = scm_cons (v, list);
    }
  return scm_reverse_x (list, SCM_EOL);
}

/* ---- Lookups ------------------------------------------------------------ */

static void
lookup_free (Lookup *l)
{
  if (l->timer)
    g_source_remove (l->timer);
  if (l->idle)
    g_source_remove (l->idle);
  if (l->result)
    ub_resolve_free (l->result);
  g_free (l->name);
  g_free (l);
}

/* Resume the rule with VALUE. Never from inside the operation's start
 * function (the session is not parked yet) nor from ub_process(). */
static void
finish (Lookup *l, SCM value)
{
  GmPolicyWait *wait = l->wait;
  lookup_free (l);
  gm_policy_wait_finish (wait, value);
}

static gboolean
early_answer (gpointer data)
{
  Lookup *l = data;
  l->idle = 0;
  finish (l, l->early_failure ? scm_from_utf8_symbol ("servfail") : SCM_EOL);
  return G_SOURCE_REMOVE;
}

/* Answer L from the main loop: the empty list, or 'servfail when FAILED. */
static void
answer_soon (Lookup *l, gboolean failed)
{
  l->early_failure = failed;
  l->idle = g_idle_add (early_answer, l);
}

static gboolean
timed_out (gpointer data)
{
  Lookup *l = data;
  l->timer = 0;
  int r = ub_cancel (ctx, l->async_id);
  if (r)
    gm_debug (NULL, "dns: %s/%s: cancel: %s", l->name, l->type->name, ub_strerror (r));
  g_autofree char *why = g_strdup_printf ("no answer within %us", gm_config.dns_timeout);
  finish (l, failure (l, "timeout", why));
  return G_SOURCE_REMOVE;
}

/* Called by ub_process(), on the main thread: only note the answer. */
static void
resolved (void *data, int err, struct ub_result *result)
{
  Lookup *l = data;
  l->err = err;
  l->result = result;
  g_queue_push_tail (&answered, l);
}

static gboolean
on_answers (gint fd, GIOCondition condition, gpointer data)
{
  int r = ub_process (ctx);
  if (r)
    gm_log (NULL, "dns: error: %s", ub_strerror (r));
  Lookup *l;
  while ((l = g_queue_pop_head (&answered)))
    finish (l, answer_value (l));
  return G_SOURCE_CONTINUE;
}

/* Can NAME (no trailing dot) be a domain name (RFC 1035 §2.3.4)? */
static gboolean
plausible_name (const char *name)
{
  gsize len = strlen (name);
  if (len == 0 || len > 253)
    return FALSE;
  for (const char *label = name; label;)
    {
      const char *dot = strchr (label, '.');
      gsize n = dot ? (gsize) (dot - label) : strlen (label);
      if (n == 0 || n > 63)
        return FALSE;
      label = dot ? dot + 1 : NULL;
    }
  for (const char *p = name; *p; p++)
    if ((guchar) *p <= 0x20 || *p == 0x7f || strchr ("[]@\\\"", *p))
      return FALSE;
  return TRUE;
}

/* The "dns" operation: ARGS is (NAME TYPE), checked by (guillemot dns); they
 * are checked again here without throwing (this runs outside any catch). */
static void
dns_operation (SCM args, GmPolicyWait *wait)
{
  Lookup *l = g_new0 (Lookup, 1);
  l->wait = wait;
  l->started = g_get_monotonic_time ();
  l->type = &types[0];
  if (scm_ilength (args) != 2 || !scm_is_string (scm_car (args))
      || !scm_is_symbol (scm_cadr (args)))
    {
      l->name = g_strdup ("?");
      gm_log (NULL, "policy error: dns: expected (suspend 'dns NAME TYPE)");
      answer_soon (l, TRUE);
      return;
    }
  char *type_name = scm_to_utf8_string (scm_symbol_to_string (scm_cadr (args)));
  l->type = NULL;
  for (guint i = 0; i < G_N_ELEMENTS (types); i++)
    if (g_ascii_strcasecmp (types[i].name, type_name) == 0)
      l->type = &types[i];
  char *name = scm_to_utf8_string (scm_car (args));
  l->name = g_strdup (name);
  free (name);
  if (!l->type)
    {
      gm_log (NULL, "policy error: dns: unknown record type %s", type_name);
      free (type_name);
      l->type = &types[0];
      answer_soon (l, TRUE);
      return;
    }
  free (type_name);

  gsize len = strlen (l->name);
  if (len > 1 && l->name[len - 1] == '.')
    l->name[len - 1] = '\0';
  if (!plausible_name (l->name))
    {
      gm_debug (NULL, "dns: %s/%s: not a domain name: no such name", l->name, l->type->name);
      answer_soon (l, FALSE);
      return;
    }

  /* The first query starts unbound's thread: it must not take the signals
   * the main thread handles (SIGALRM of rule-time-limit, SIGTERM, ...). */
  sigset_t all, saved;
  if (!thread_started)
    {
      sigfillset (&all);
      pthread_sigmask (SIG_BLOCK, &all, &saved);
    }
  int r = ub_resolve_async (ctx, l->name, l->type->rrtype, CLASS_IN, l, resolved, &l->async_id);
  if (!thread_started)
    {
      pthread_sigmask (SIG_SETMASK, &saved, NULL);
      thread_started = (r == 0);
    }
  if (r)
    {
      gm_debug (NULL, "dns: %s/%s: %s", l->name, l->type->name, ub_strerror (r));
      answer_soon (l, r != UB_SYNTAX);
      return;
    }
  l->timer = g_timeout_add ((guint) gm_config.dns_timeout * 1000, timed_out, l);
}

/* ---- Set-up --------------------------------------------------------------- */

/* The message of unbound's last "error:" line in LOG, or a generic one. */
static char *
unbound_complaint (const char *log)
{
  const char *last = NULL;
  for (const char *p = log; p && (p = strstr (p, "error: ")); p += 7)
    last = p + 7;
  if (!last)
    return g_strdup ("unbound refused the configuration");
  return g_strndup (last, strcspn (last, "\n"));
}

/* Load the configuration into unbound now (it would otherwise do it at the
 * first lookup, and a mistake would only show as lookups failing): one
 * lookup of a name that is always answered locally (RFC 6761 §6.4). */
static gboolean
check_configuration (GError **error)
{
  char *log = NULL;
  size_t log_len = 0;
  FILE *mem = open_memstream (&log, &log_len);
  if (mem)
    ub_ctx_debugout (ctx, mem);
  struct ub_result *result = NULL;
  int r = ub_resolve (ctx, "invalid.", TYPE_A, CLASS_IN, &result);
  if (mem)
    {
      ub_ctx_debugout (ctx, stderr);
      fclose (mem);
    }
  if (result)
    ub_resolve_free (result);
  if (r)
    {
      g_autofree char *why = r == UB_INITFAIL ? unbound_complaint (log)
        : g_strdup (ub_strerror (r));
      g_set_error (error, GM_DNS_ERROR, 0, "dns-local-data, dns-local-zones: %s", why);
    }
  free (log);
  return r == 0;
}

static gboolean
configure (GError **error)
{
  int r = ub_ctx_async (ctx, 1);
  if (r)
    {
      g_set_error (error, GM_DNS_ERROR, 0, "dns: cannot use a resolver thread: %s",
                   ub_strerror (r));
      return FALSE;
    }
  switch ((GmDnsResolver) gm_config.dns_resolver)
    {
    case GM_DNS_SYSTEM:
      if ((r = ub_ctx_resolvconf (ctx, NULL)))
        gm_log (NULL, "warning: dns-resolver system: cannot use /etc/resolv.conf (%s): "
                "resolving from the root name servers", r == UB_READFILE ? g_strerror (errno)
                : ub_strerror (r));
      if ((r = ub_ctx_hosts (ctx, NULL)))
        gm_log (NULL, "warning: dns-resolver system: cannot use /etc/hosts (%s)",
                r == UB_READFILE ? g_strerror (errno) : ub_strerror (r));
      break;
    case GM_DNS_FORWARD:
      if (!gm_config.dns_forwarders || !gm_config.dns_forwarders[0])
        {
          g_set_error (error, GM_DNS_ERROR, 0,
                       "dns-resolver forward needs at least one address in dns-forwarders");
          return FALSE;
        }
      for (char **f = gm_config.dns_forwarders; *f; f++)
        if (ub_ctx_set_fwd (ctx, *f))
          {
            g_set_error (error, GM_DNS_ERROR, 0,
                         "dns-forwarders: \"%s\" is not an IPv4 or IPv6 address, optionally "
                         "followed by @PORT", *f);
            return FALSE;
          }
      /* Forwarders on this machine (a local cache, a test server) are allowed. */
      ub_ctx_set_option (ctx, "do-not-query-localhost:", "no");
      break;
    case GM_DNS_RECURSIVE:
      break;
    }
  for (char **z = gm_config.dns_local_zones; z && *z; z++)
    {
      g_auto (GStrv) words = g_strsplit_set (g_strstrip (*z), " \t", -1);
      GPtrArray *parts = g_ptr_array_new ();
      for (char **w = words; *w; w++)
        if (**w)
          g_ptr_array_add (parts, *w);
      g_autofree char *zone = parts->len == 1
        ? g_strdup_printf ("%s static", (char *) parts->pdata[0])
        : parts->len == 2 ? g_strdup_printf ("%s %s", (char *) parts->pdata[0],
                                             (char *) parts->pdata[1]) : NULL;
      g_ptr_array_free (parts, TRUE);
      if (!zone || ub_ctx_set_option (ctx, "local-zone:", zone))
        {
          g_set_error (error, GM_DNS_ERROR, 0,
                       "dns-local-zones: \"%s\" is not NAME or NAME TYPE (such as "
                       "\"example.test static\")", *z);
          return FALSE;
        }
    }
  for (char **d = gm_config.dns_local_data; d && *d; d++)
    if (ub_ctx_set_option (ctx, "local-data:", *d))
      {
        g_set_error (error, GM_DNS_ERROR, 0, "dns-local-data: unbound refused \"%s\"", *d);
        return FALSE;
      }
  return check_configuration (error);
}

gboolean
gm_dns_init (GError **error)
{
  g_return_val_if_fail (ctx == NULL, FALSE);
  ctx = ub_ctx_create ();
  if (!ctx)
    {
      g_set_error (error, GM_DNS_ERROR, 0, "dns: cannot create the resolver: %s",
                   g_strerror (errno));
      return FALSE;
    }
  if (!configure (error))
    {
      ub_ctx_delete (ctx);
      ctx = NULL;
      return FALSE;
    }
  g_unix_fd_add (ub_fd (ctx), G_IO_IN, on_answers, NULL);
  gm_policy_register_operation ("dns", dns_operation);
  return TRUE;
}
