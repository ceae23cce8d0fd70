/* settings.h — every server setting, declared once.
 *
 * One table (settings.c) gives each setting its name, type, default, bounds and
 * documentation. It feeds the C code (gm_config), the keywords of Scheme's
 * define-server, the --set option and the manual (doc/settings.texi is checked
 * against it by the tests). */
#pragma once
#include <glib.h>

typedef enum
{
  GM_BARE_NORMALISE,            /* bare CR or LF is taken as a line end */
  GM_BARE_REJECT,               /* a message or command with one is refused */
} GmBareLineEndings;

typedef enum
{
  GM_QUEUE_RUN,              /* queued messages are delivered */
  GM_QUEUE_HOLD,             /* they stay in the queue until a reload says run */
} GmDeliveryMode;

typedef enum
{
  GM_TRANSPORT_NONE,
  GM_TRANSPORT_MAILDIR,
  GM_TRANSPORT_MBOX,
} GmTransport;

typedef struct
{
  char *hostname;
  char **listen;                /* NULL-terminated list of "HOST:PORT" / "[V6]:PORT" */
  char *state_dir;
  guint64 max_message_size;     /* bytes */
  guint max_header_size;        /* bytes */
  guint max_recipients;
  guint max_connections;
  guint max_connections_per_client;
  guint command_timeout;        /* seconds */
  guint data_timeout;           /* seconds */
  guint min_data_rate;          /* bytes per second, 0: none */
  guint max_errors;
  guint max_command_length;     /* bytes, CRLF included */
  guint bare_line_endings;      /* GmBareLineEndings */
  guint shutdown_timeout;       /* seconds */
  guint workers;
  guint rule_time_limit;        /* milliseconds */
  guint retry_min;              /* seconds */
  guint retry_max;              /* seconds */
  guint max_queue_lifetime;     /* seconds */
  guint delivery;               /* GmDeliveryMode */
  guint dns_resolver;           /* GmDnsResolver (dns.h): system, forward, recursive */
  char **dns_forwarders;        /* NULL-terminated: "IP" or "IP@PORT" */
  guint dns_timeout;            /* seconds */
  char **dns_local_data;        /* NULL-terminated unbound local-data RRs */
  char **dns_local_zones;       /* NULL-terminated "NAME [TYPE]" unbound local-zones */

  /* Local routing (set by local-domains and deliver-local). */
  char **local_domains;         /* NULL-terminated, lower case */
  GmTransport local_transport;
  char *local_template;         /* "mail/~a/Maildir": ~a is the local part */
} GmConfig;

extern GmConfig gm_config;

typedef enum
{
  GM_SETTING_STRING,
  GM_SETTING_STRING_LIST,
  GM_SETTING_COUNT,
  GM_SETTING_BYTES,
  GM_SETTING_SECONDS,
  GM_SETTING_CHOICE,
} GmSettingType;

typedef struct
{
  const char *name;             /* as in define-server's #:keyword and --set KEY */
  GmSettingType type;
  gsize offset;                 /* into GmConfig */
  const char *default_value;    /* textual, as for --set; NULL: computed */
  guint64 min, max;             /* numeric types */
  const char *const *choices;   /* GM_SETTING_CHOICE: NULL-terminated */
  const char *doc;
} GmSetting;

#define GM_SETTINGS_ERROR (gm_settings_error_quark ())
GQuark gm_settings_error_quark (void);

const GmSetting *gm_settings_table (gsize *n_settings);
const GmSetting *gm_setting_lookup (const char *name);

/* Back to the defaults (and clears local routing). */
void gm_config_reset (void);

/* Assign from text, as given to --set (lists are comma-separated). */
gboolean gm_setting_set_text (const GmSetting *s, const char *text, GError **error);
/* Typed assignments, used by the Scheme binding. */
gboolean gm_setting_set_number (const GmSetting *s, guint64 value, GError **error);
gboolean gm_setting_set_strv (const GmSetting *s, const char *const *values, GError **error);

/* Apply "KEY=VALUE" (the --set option). */
gboolean gm_config_apply_override (const char *assignment, GError **error);

/* Checks that need every setting: e.g. listen not empty. */
gboolean gm_config_validate (GError **error);

/* Split "HOST:PORT" or "[V6]:PORT". Returns FALSE with a message on bad syntax. */
gboolean gm_parse_listen (const char *item, char **host, guint16 *port, GError **error);

/* The path a local delivery for LOCAL_PART goes to, absolute (relative
 * templates are under state_dir). */
char *gm_config_local_path (const char *local_part);
/* The same for TEMPLATE ("mail/~a/Maildir": ~a the local part, ~~ a ~). */
char *gm_mailbox_path (const char *template, const char *local_part);
