/* settings.c — the table of server settings and its parsers.
 *
 * Timeouts default to RFC 5321 §4.5.3.2; line and size limits to §4.5.3.1
 * where the RFC gives one. */
#include "config.h"
#include "settings.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

GmConfig gm_config;

G_DEFINE_QUARK (gm-settings-error-quark, gm_settings_error)

static const char *const bare_choices[] = { "normalise", "reject", NULL };

#define OFF(field) G_STRUCT_OFFSET (GmConfig, field)

static const GmSetting settings[] = {
  { "hostname", GM_SETTING_STRING, OFF (hostname), NULL, 0, 0, NULL,
    "Name the server gives itself in the greeting, EHLO reply and Received: headers. "
    "Default: the system's host name." },
  { "listen", GM_SETTING_STRING_LIST, OFF (listen), "0.0.0.0:25,[::]:25", 0, 0, NULL,
    "Addresses to accept SMTP connections on: a list of \"HOST:PORT\" and \"[IPV6]:PORT\"." },
  { "state-dir", GM_SETTING_STRING, OFF (state_dir), "/var/spool/guillemot", 0, 0, NULL,
    "Directory holding the spool and, for relative mailbox templates, the mailboxes." },
  { "max-message-size", GM_SETTING_BYTES, OFF (max_message_size), "10240000", 1024,
    G_GUINT64_CONSTANT (4294967295), NULL,
    "Largest message accepted, in bytes, as received (before the Received: header)." },
  { "max-header-size", GM_SETTING_BYTES, OFF (max_header_size), "1048576", 1024,
    G_GUINT64_CONSTANT (4294967295), NULL,
    "Largest header section accepted, in bytes as received (CRLF included): the lines from the "
    "start of the message to the empty line, or to the first line that is not a header field. "
    "A larger one (a single long header line included) gets 552 5.3.4 once the message has "
    "been read." },
  { "max-recipients", GM_SETTING_COUNT, OFF (max_recipients), "1000", 1, 100000, NULL,
    "Recipients accepted per message; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8 asks for at least 100)." },
  { "max-connections", GM_SETTING_COUNT, OFF (max_connections), "2000", 1, 1000000, NULL,
    "Simultaneous client connections in total; the next one gets 421 4.7.0." },
  { "max-connections-per-client", GM_SETTING_COUNT, OFF (max_connections_per_client), "50", 1,
    1000000, NULL,
    "Simultaneous connections from one client address; the next one gets 421 4.7.0." },
  { "command-timeout", GM_SETTING_SECONDS, OFF (command_timeout), "300", 1, 86400, NULL,
    "Seconds a client has to send each whole command line, counted from the end of the previous "
    "one (RFC 5321 §4.5.3.2.7: at least 5 minutes); bytes that do not complete the line do not "
    "restart it." },
  { "data-timeout", GM_SETTING_SECONDS, OFF (data_timeout), "300", 1, 86400, NULL,
    "Seconds to wait for message data during DATA or BDAT. The time left shrinks while the "
    "client sends nothing and grows with what it sends (see min-data-rate), never beyond "
    "data-timeout." },
  { "min-data-rate", GM_SETTING_COUNT, OFF (min_data_rate), "500", 0, 1000000000, NULL,
    "Bytes per second a client must keep up while it sends message data: every read of N bytes "
    "gives data-timeout N / min-data-rate seconds more (Postfix's smtpd_min_data_rate), so one "
    "trickling a byte at a time is disconnected after data-timeout. 0: every read restarts "
    "data-timeout." },
  { "max-errors", GM_SETTING_COUNT, OFF (max_errors), "20", 1, 1000, NULL,
    "Error replies a client may cause before it is disconnected with 421 4.7.0." },
  { "max-command-length", GM_SETTING_BYTES, OFF (max_command_length), "2048", 512, 65536, NULL,
    "Longest command line, CRLF included (RFC 5321 §4.5.3.1.4 minimum 512); longer lines get 500 5.5.2." },
  { "bare-line-endings", GM_SETTING_CHOICE, OFF (bare_line_endings), "normalise", 0, 0, bare_choices,
    "What a bare CR or LF (one not part of CRLF) means: \"normalise\" takes it as a line end "
    "(a bare LF ends a command line; a bare CR in a command is always refused), \"reject\" refuses "
    "the command with 500 5.5.2 or the message with 550 5.6.0. Either way only CRLF.CRLF ends a "
    "message and nothing bare is stored." },
  { "shutdown-timeout", GM_SETTING_SECONDS, OFF (shutdown_timeout), "30", 0, 3600, NULL,
    "On SIGTERM or SIGINT, seconds given to transactions in progress before they get 421." },
  { "workers", GM_SETTING_COUNT, OFF (workers), "8", 1, 256, NULL,
    "Threads writing and fsyncing spool files and delivering locally." },
  { "rule-time-limit", GM_SETTING_COUNT, OFF (rule_time_limit), "1000", 1, 600000, NULL,
    "Milliseconds a policy rule may compute without waiting for I/O; past that it is "
    "interrupted, logged, and the client gets 451 4.3.0." },
  { "retry-min", GM_SETTING_SECONDS, OFF (retry_min), "300", 1, 86400, NULL,
    "Delay before the first retry of a failed delivery; it doubles at each attempt." },
  { "retry-max", GM_SETTING_SECONDS, OFF (retry_max), "3600", 1, 86400, NULL,
    "Longest delay between two delivery attempts." },
  { "max-queue-lifetime", GM_SETTING_SECONDS, OFF (max_queue_lifetime), "432000", 0, 31536000, NULL,
    "Seconds a message may stay undeliverable before its recipients fail permanently (default 5 days)." },
  { "delivery", GM_SETTING_CHOICE, OFF (delivery), "run", 0, 0,
    (const char *const[]) { "run", "hold", NULL },
    "\"run\" delivers queued messages; \"hold\" keeps every accepted message in the queue, "
    "undelivered, until a reload sets \"run\" again (Postfix's hold queue, for maintenance "
    "and for measuring the intake alone)." },
  { "dns-resolver", GM_SETTING_CHOICE, OFF (dns_resolver), "system", 0, 0,
    (const char *const[]) { "system", "forward", "recursive", NULL },
    "Where rules' DNS lookups go: \"system\" asks the name servers of /etc/resolv.conf and "
    "answers the names of /etc/hosts, \"forward\" asks the servers of dns-forwarders, "
    "\"recursive\" resolves from the root name servers itself." },
  { "dns-forwarders", GM_SETTING_STRING_LIST, OFF (dns_forwarders), "", 0, 0, NULL,
    "Name servers asked when dns-resolver is \"forward\": a list of IPv4 or IPv6 addresses, "
    "each optionally followed by @PORT (\"192.0.2.53\", \"2001:db8::53@5353\")." },
  { "dns-timeout", GM_SETTING_SECONDS, OFF (dns_timeout), "5", 1, 600, NULL,
    "Seconds a rule waits for a DNS answer; past that its lookup answers timeout." },
  { "dns-local-data", GM_SETTING_STRING_LIST, OFF (dns_local_data), "", 0, 0, NULL,
    "DNS records answered without asking any server, one resource record per string in "
    "zone-file syntax (\"mx.example.test. 300 IN A 192.0.2.1\"), as unbound's local-data." },
  { "dns-local-zones", GM_SETTING_STRING_LIST, OFF (dns_local_zones), "", 0, 0, NULL,
    "Domains answered from dns-local-data alone, as unbound's local-zone: \"NAME\" (a name "
    "without data answers that it does not exist) or \"NAME TYPE\" with an unbound "
    "local-zone type such as static, transparent or refuse." },
};

const GmSetting *
gm_settings_table (gsize *n_settings)
{
  *n_settings = G_N_ELEMENTS (settings);
  return settings;
}

const GmSetting *
gm_setting_lookup (const char *name)
{
  for (gsize i = 0; i < G_N_ELEMENTS (settings); i++)
    if (strcmp (settings[i].name, name) == 0)
      return &settings[i];
  return NULL;
}

static void *
field (const GmSetting *s)
{
  return G_STRUCT_MEMBER_P (&gm_config, s->offset);
}

static const char *
unit (const GmSetting *s)
{
  switch (s->type)
    {
    case GM_SETTING_BYTES: return " bytes";
    case GM_SETTING_SECONDS: return " seconds";
    default: return "";
    }
}

gboolean
gm_setting_set_number (const GmSetting *s, guint64 value, GError **error)
{
  if (s->type != GM_SETTING_COUNT && s->type != GM_SETTING_BYTES && s->type != GM_SETTING_SECONDS)
    {
      g_set_error (error, GM_SETTINGS_ERROR, 0, "%s expects %s, not a number", s->name,
                   s->type == GM_SETTING_STRING_LIST ? "a list of strings" :
                   s->type == GM_SETTING_CHOICE ? "a symbol" : "a string");
      return FALSE;
    }
  if (value < s->min || value > s->max)
    {
      g_set_error (error, GM_SETTINGS_ERROR, 0,
                   "%s must be between %" G_GUINT64_FORMAT " and %" G_GUINT64_FORMAT "%s, got %"
                   G_GUINT64_FORMAT, s->name, s->min, s->max, unit (s), value);
      return FALSE;
    }
  if (s->offset == OFF (max_message_size))
    *(guint64 *) field (s) = value;
  else
    *(guint *) field (s) = (guint) value;
  return TRUE;
}

gboolean
gm_setting_set_strv (const GmSetting *s, const char *const *values, GError **error)
{
  if (s->type != GM_SETTING_STRING_LIST)
    {
      g_set_error (error, GM_SETTINGS_ERROR, 0, "%s does not take a list", s->name);
      return FALSE;
    }
  if (s->offset == OFF (listen))
    for (const char *const *v = values; *v; v++)
      {
        g_autofree char *host = NULL;
        guint16 port;
        if (!gm_parse_listen (*v, &host, &port, error))
          return FALSE;
      }
  char ***slot = field (s);
  g_strfreev (*slot);
  *slot = g_strdupv ((char **) values);
  return TRUE;
}

static gboolean
parse_number (const GmSetting *s, const char *text, guint64 *out, GError **error)
{
  char *end = NULL;
  if (!g_ascii_isdigit (*text))
    goto bad;
  guint64 v = g_ascii_strtoull (text, &end, 10);
  guint64 mult = 1;
  if (s->type == GM_SETTING_BYTES && *end)
    {
      switch (g_ascii_toupper (*end))
        {
        case 'K': mult = 1024; break;
        case 'M': mult = 1024 * 1024; break;
        case 'G': mult = 1024 * 1024 * 1024; break;
        default: goto bad;
        }
      end++;
    }
  if (*end)
    goto bad;
  *out = v * mult;
  return TRUE;
bad:
  g_set_error (error, GM_SETTINGS_ERROR, 0, "%s expects a number%s, got \"%s\"", s->name,
               s->type == GM_SETTING_BYTES ? " of bytes (suffix K, M or G allowed)" : "", text);
  return FALSE;
}

gboolean
gm_setting_set_text (const GmSetting *s, const char *text, GError **error)
{
  switch (s->type)
    {
    case GM_SETTING_STRING:
      if (!*text)
        {
          g_set_error (error, GM_SETTINGS_ERROR, 0, "%s must not be empty", s->name);
          return FALSE;
        }
      g_free (*(char **) field (s));
      *(char **) field (s) = g_strdup (text);
      return TRUE;
    case GM_SETTING_STRING_LIST:
      {
        g_auto (GStrv) parts = g_strsplit (text, ",", -1);
        for (char **p = parts; *p; p++)
          g_strstrip (*p);
        return gm_setting_set_strv (s, (const char *const *) parts, error);
      }
    case GM_SETTING_CHOICE:
      for (guint i = 0; s->choices[i]; i++)
        if (strcmp (s->choices[i], text) == 0
            || (strcmp (s->choices[i], "normalise") == 0 && strcmp (text, "normalize") == 0))
          {
            *(guint *) field (s) = i;
            return TRUE;
          }
      {
        g_autofree char *list = g_strjoinv (", ", (char **) s->choices);
        g_set_error (error, GM_SETTINGS_ERROR, 0, "%s must be one of %s, got \"%s\"", s->name, list,
                     text);
      }
      return FALSE;
    default:
      {
        guint64 v;
        return parse_number (s, text, &v, error) && gm_setting_set_number (s, v, error);
      }
    }
}

void
gm_config_reset (void)
{
  for (gsize i = 0; i < G_N_ELEMENTS (settings); i++)
    {
      const GmSetting *s = &settings[i];
      if (s->default_value)
        {
          g_autoptr (GError) error = NULL;
          if (!gm_setting_set_text (s, s->default_value, &error))
            g_error ("bad default for %s: %s", s->name, error->message);
        }
    }
  g_free (gm_config.hostname);
  gm_config.hostname = g_strdup (g_get_host_name ());
  g_strfreev (gm_config.local_domains);
  gm_config.local_domains = g_new0 (char *, 1);
  gm_config.local_transport = GM_TRANSPORT_MAILDIR;
  g_free (gm_config.local_template);
  gm_config.local_template = g_strdup ("mail/~a/Maildir");
}

gboolean
gm_config_apply_override (const char *assignment, GError **error)
{
  const char *eq = strchr (assignment, '=');
  if (!eq)
    {
      g_set_error (error, GM_SETTINGS_ERROR, 0, "--set expects KEY=VALUE, got \"%s\"", assignment);
      return FALSE;
    }
  g_autofree char *key = g_strndup (assignment, eq - assignment);
  const GmSetting *s = gm_setting_lookup (key);
  if (!s)
    {
      g_set_error (error, GM_SETTINGS_ERROR, 0, "--set: unknown setting \"%s\"", key);
      return FALSE;
    }
  return gm_setting_set_text (s, eq + 1, error);
}

gboolean
gm_config_validate (GError **error)
{
  if (!gm_config.listen || !gm_config.listen[0])
    {
      g_set_error (error, GM_SETTINGS_ERROR, 0, "listen: at least one address is needed");
      return FALSE;
    }
  if (gm_config.retry_min > gm_config.retry_max)
    {
      g_set_error (error, GM_SETTINGS_ERROR, 0, "retry-min (%u) is larger than retry-max (%u)",
                   gm_config.retry_min, gm_config.retry_max);
      return FALSE;
    }
  return TRUE;
}

gboolean
gm_parse_listen (const char *item, char **host, guint16 *port, GError **error)
{
  const char *colon;
  if (item[0] == '[')
    {
      const char *close = strchr (item, ']');
      if (!close || close[1] != ':')
        goto bad;
      *host = g_strndup (item + 1, close - item - 1);
      colon = close + 1;
    }
  else
    {
      colon = strrchr (item, ':');
      if (!colon || strchr (item, ':') != colon)
        goto bad;
      *host = g_strndup (item, colon - item);
    }
  char *end;
  guint64 p = g_ascii_strtoull (colon + 1, &end, 10);
  if (!**host || !g_ascii_isdigit (colon[1]) || *end || p == 0 || p > 65535)
    {
      g_clear_pointer (host, g_free);
      goto bad;
    }
  guchar addr[16];
  if (inet_pton (AF_INET, *host, addr) != 1 && inet_pton (AF_INET6, *host, addr) != 1)
    {
      g_set_error (error, GM_SETTINGS_ERROR, 0,
                   "listen: \"%s\": \"%s\" is not a numeric IPv4 or IPv6 address", item, *host);
      g_clear_pointer (host, g_free);
      return FALSE;
    }
  *port = (guint16) p;
  return TRUE;
bad:
  g_set_error (error, GM_SETTINGS_ERROR, 0,
               "listen: \"%s\" is not HOST:PORT or [IPV6]:PORT with a port from 1 to 65535", item);
  return FALSE;
}

char *
gm_config_local_path (const char *local_part)
{
  return gm_mailbox_path (gm_config.local_template, local_part);
}

char *
gm_mailbox_path (const char *template, const char *local_part)
{
  GString *path = g_string_new (NULL);
  const char *t = template;
  for (; *t; t++)
    {
      if (t[0] == '~' && t[1] == 'a')
        {
          g_string_append (path, local_part);
          t++;
        }
      else if (t[0] == '~' && t[1] == '~')
        {
          g_string_append_c (path, '~');
          t++;
        }
      else
        g_string_append_c (path, *t);
    }
  if (!g_path_is_absolute (path->str))
    {
      char *abs = g_build_filename (gm_config.state_dir, path->str, NULL);
      g_string_free (path, TRUE);
      return abs;
    }
  return g_string_free (path, FALSE);
}
