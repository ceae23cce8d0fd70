/* control.c — loading and reloading the configuration; the control
 * directory STATE-DIR/control/ (0700) and its two sockets (0600):
 *
 *   control.sock  `guillemot reload` writes "reload\n"; the server answers
 *                 "ok\n" or "error\n", then the report or the error message,
 *                 and closes. One request per connection.
 *   repl.sock     Guile's cooperative REPL server ((system repl coop-server),
 *                 DESIGN.md §7), started by (guillemot repl); a GLib timer
 *                 polls it every 50 ms, so what the administrator types is
 *                 evaluated on the main thread between two events.
 *
 * A reload (SIGHUP, control.sock, (reload!)) evaluates the file serve was
 * started with again, with the same --set overrides. Failure changes
 * nothing: the settings are put back exactly as they were (the same
 * strings) and the rules in force stay. Success installs the new rules for
 * sessions that start from then on (policy.c: sessions in progress keep
 * theirs) and the new settings, except those that need a restart (listen,
 * state-dir, workers, the dns-* resolver settings), which keep their running
 * values with a warning.
 *
 * Both client subcommands (reload, repl) live here too, next to the
 * protocol they speak. */
#include "config.h"
#include "control.h"
#include "server.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <libguile.h>

#include "log.h"
#include "queue.h"
#include "policy.h"
#include "scm-config.h"
#include "settings.h"
#include "workers.h"

#define GM_CONTROL_ERROR (gm_control_error_quark ())
static G_DEFINE_QUARK (gm-control-error-quark, gm_control_error)

#define REPL_POLL_MS 50
#define REQUEST_MAX 256                 /* bytes of a control.sock request line */
#define REQUEST_TIMEOUT_S 10            /* for the request line to arrive */
#define CLIENT_TIMEOUT_S 120            /* the reload command waits this long */

/* Settings whose new value a reload cannot apply: the sockets are bound, the
 * spool is open, the threads are started, dns.c made its resolver at start.
 * A name the settings table does not know is skipped. */
static const char *const restart_only[] = {
  "listen", "state-dir", "workers",
  "dns-resolver", "dns-forwarders", "dns-local-data", "dns-local-zones",
};

static char *config_file;               /* as given to serve */
static char **config_overrides;         /* --set KEY=VALUE, NULL-terminated */
static char *control_path, *repl_path;
static int control_fd = -1;
static guint control_source, poll_source;
static SCM installed = SCM_BOOL_F;      /* the rule set new sessions get, protected once set */
static SCM rules_variable;              /* (guillemot)'s rules: what a load collects */
static SCM poll_repl;                   /* (guillemot repl) %poll-repl */
static gboolean reloading;

/* ---- Loading --------------------------------------------------------- */

gboolean
gm_control_load (const char *file, const char *const *overrides, GError **error)
{
  GError *e = NULL;
  gm_config_reset ();
  if (!gm_scm_load_config (file, error))
    return FALSE;
  for (const char *const *o = overrides; o && *o; o++)
    if (!gm_config_apply_override (*o, &e))
      {
        g_set_error (error, GM_CONTROL_ERROR, 0, "guillemot: %s", e->message);
        g_error_free (e);
        return FALSE;
      }
  if (!gm_config_validate (&e))
    {
      g_set_error (error, GM_CONTROL_ERROR, 0, "%s: %s", file, e->message);
      g_error_free (e);
      return FALSE;
    }
  if (!g_path_is_absolute (gm_config.state_dir))
    {
      g_autofree char *cwd = g_get_current_dir ();
      char *abs = g_build_filename (cwd, gm_config.state_dir, NULL);
      g_free (gm_config.state_dir);
      gm_config.state_dir = abs;
    }
  return TRUE;
}

/* ---- The settings around a reload ------------------------------------- */

/* The string fields of GmConfig: those of the settings table, and local
 * routing (set by local-domains and deliver-local, not in the table). A new
 * string field outside the table must be added here. */
typedef struct
{
  gsize offset;
  gboolean list;                /* char ** (NULL-terminated) rather than char * */
} StringField;

static GArray *
string_fields (void)
{
  static GArray *fields;
  if (fields)
    return fields;
  fields = g_array_new (FALSE, FALSE, sizeof (StringField));
  gsize n;
  const GmSetting *table = gm_settings_table (&n);
  for (gsize i = 0; i < n; i++)
    if (table[i].type == GM_SETTING_STRING || table[i].type == GM_SETTING_STRING_LIST)
      {
        StringField f = { table[i].offset, table[i].type == GM_SETTING_STRING_LIST };
        g_array_append_val (fields, f);
      }
  StringField domains = { G_STRUCT_OFFSET (GmConfig, local_domains), TRUE };
  StringField template = { G_STRUCT_OFFSET (GmConfig, local_template), FALSE };
  g_array_append_val (fields, domains);
  g_array_append_val (fields, template);
  return fields;
}

#define SLOT(config, offset) ((gpointer *) G_STRUCT_MEMBER_P ((config), (offset)))

/* Give C fresh copies of its strings (the originals stay with whoever else
 * points to them). */
static void
config_copy_strings (GmConfig *c)
{
  GArray *fields = string_fields ();
  for (guint i = 0; i < fields->len; i++)
    {
      StringField *f = &g_array_index (fields, StringField, i);
      gpointer *slot = SLOT (c, f->offset);
      *slot = f->list ? (gpointer) g_strdupv (*slot) : (gpointer) g_strdup (*slot);
    }
}

/* Strings replaced by a reload are freed only once no worker job is queued
 * or running: a worker thread may still be using one it read from
 * gm_config before the reload. */
static GPtrArray *retired;

static void
retire (gpointer p, gboolean list)
{
  if (!p)
    return;
  if (!retired)
    retired = g_ptr_array_new ();
  g_ptr_array_add (retired, list ? (gpointer) g_strfreev : (gpointer) g_free);
  g_ptr_array_add (retired, p);
}

static void
free_retired (void)
{
  if (!retired || retired->len == 0 || gm_workers_pending () > 0)
    return;
  for (guint i = 0; i < retired->len; i += 2)
    ((GDestroyNotify) g_ptr_array_index (retired, i)) (g_ptr_array_index (retired, i + 1));
  g_ptr_array_set_size (retired, 0);
}

/* Retire the strings of OLD that NEW does not share. */
static void
retire_replaced (GmConfig *old, const GmConfig *new)
{
  GArray *fields = string_fields ();
  for (guint i = 0; i < fields->len; i++)
    {
      StringField *f = &g_array_index (fields, StringField, i);
      gpointer *slot = SLOT (old, f->offset);
      if (*slot != *SLOT ((GmConfig *) new, f->offset))
        retire (*slot, f->list);
      *slot = NULL;
    }
}

static gsize
number_size (const GmSetting *s)
{
  /* As settings.c: max-message-size alone is 64 bits wide. */
  return s->offset == G_STRUCT_OFFSET (GmConfig, max_message_size) ? sizeof (guint64)
    : sizeof (guint);
}

static gboolean
setting_equal (const GmSetting *s, GmConfig *a, GmConfig *b)
{
  gpointer *x = SLOT (a, s->offset), *y = SLOT (b, s->offset);
  switch (s->type)
    {
    case GM_SETTING_STRING:
      return g_strcmp0 (*x, *y) == 0;
    case GM_SETTING_STRING_LIST:
      return (*x == NULL) == (*y == NULL) && (!*x || g_strv_equal (*x, *y));
    default:
      return memcmp (x, y, number_size (s)) == 0;
    }
}

static char *
setting_text (const GmSetting *s, GmConfig *c)
{
  gpointer *x = SLOT (c, s->offset);
  switch (s->type)
    {
    case GM_SETTING_STRING:
      return g_strdup (*x ? *x : "");
    case GM_SETTING_STRING_LIST:
      return *x ? g_strjoinv (",", *x) : g_strdup ("");
    case GM_SETTING_CHOICE:
      return g_strdup (s->choices[*(guint *) x]);
    default:
      if (number_size (s) == sizeof (guint64))
        return g_strdup_printf ("%" G_GUINT64_FORMAT, *(guint64 *) x);
      return g_strdup_printf ("%u", *(guint *) x);
    }
}

/* Put the running value of S back into gm_config, retiring the loaded one. */
static void
keep_running_value (const GmSetting *s, GmConfig *running)
{
  gpointer *now = SLOT (&gm_config, s->offset), *old = SLOT (running, s->offset);
  if (s->type == GM_SETTING_STRING || s->type == GM_SETTING_STRING_LIST)
    {
      retire (*now, s->type == GM_SETTING_STRING_LIST);
      *now = *old;
    }
  else
    memcpy (now, old, number_size (s));
}

/* ---- Rules ------------------------------------------------------------- */

static void
set_installed (SCM rule_set)
{
  if (scm_is_true (installed))
    scm_gc_unprotect_object (installed);
  installed = rule_set;
  scm_gc_protect_object (installed);
}

/* Make RULE_SET the rules of the sessions that start from now on. policy.c
 * takes the rules of the last load, (guillemot)'s rules: set that first. */
static void
install_rules (SCM rule_set)
{
  scm_variable_set_x (rules_variable, rule_set);
  gm_policy_install_loaded ();
  set_installed (rule_set);
}

static char *
rule_count (SCM rule_set)
{
  long n = scm_ilength (rule_set);
  return g_strdup_printf ("%ld rule%s", n, n == 1 ? "" : "s");
}

/* ---- Reload ------------------------------------------------------------ */

typedef struct
{
  char *report;
  GError *error;
} Reload;

static gboolean
reload (Reload *out)
{
  /* RUNNING keeps the strings in force, which sessions and worker threads
   * may be using; the load frees and replaces copies of them instead. */
  GmConfig running = gm_config;
  config_copy_strings (&gm_config);
  if (!gm_control_load (config_file, (const char *const *) config_overrides, &out->error))
    {
      /* Back exactly as before: the same values, the same strings, and the
       * rules collected by the failed load dropped. */
      retire_replaced (&gm_config, &running);
      gm_config = running;
      scm_variable_set_x (rules_variable, installed);
      return FALSE;
    }

  GPtrArray *warnings = g_ptr_array_new_with_free_func (g_free);
  for (gsize i = 0; i < G_N_ELEMENTS (restart_only); i++)
    {
      const GmSetting *s = gm_setting_lookup (restart_only[i]);
      if (s && !setting_equal (s, &running, &gm_config))
        {
          g_autofree char *kept = setting_text (s, &running);
          g_autofree char *wanted = setting_text (s, &gm_config);
          g_ptr_array_add (warnings, g_strdup_printf ("%s changed (to %s): restart to apply it; "
                                                      "the server keeps %s", s->name, wanted,
                                                      kept));
          keep_running_value (s, &running);
        }
    }
  retire_replaced (&running, &gm_config);

  SCM loaded = scm_call_0 (scm_c_private_ref ("guillemot", "%loaded-rules"));
  install_rules (loaded);
  gm_queue_settings_changed ();
  g_autofree char *count = rule_count (loaded);
  GString *text = g_string_new (NULL);
  g_string_append_printf (text, "reloaded %s: %s", config_file, count);
  gm_log (NULL, "%s", text->str);
  for (guint i = 0; i < warnings->len; i++)
    {
      const char *w = g_ptr_array_index (warnings, i);
      gm_log (NULL, "warning: reload: %s", w);
      g_string_append_printf (text, "\nwarning: %s", w);
    }
  g_ptr_array_free (warnings, TRUE);
  out->report = g_string_free (text, FALSE);
  return TRUE;
}

static SCM
reload_body (void *data)
{
  return scm_from_bool (reload (data));
}

static SCM
reload_broke (void *data, SCM key, SCM args)
{
  Reload *out = data;
  SCM port = scm_open_output_string ();
  scm_print_exception (port, SCM_BOOL_F, key, args);
  char *text = scm_to_utf8_string (scm_get_output_string (port));
  g_clear_error (&out->error);
  g_set_error (&out->error, GM_CONTROL_ERROR, 0, "%s: %s", config_file, g_strchomp (text));
  free (text);
  return SCM_BOOL_F;
}

gboolean
gm_control_reload (const char *origin, char **report, GError **error)
{
  if (!config_file)
    {
      g_set_error (error, GM_CONTROL_ERROR, 0, "the control directory is not set up");
      return FALSE;
    }
  if (reloading)
    {
      g_set_error (error, GM_CONTROL_ERROR, 0, "a reload is already in progress");
      return FALSE;
    }
  reloading = TRUE;
  gm_log (NULL, "reload requested (%s): loading %s", origin, config_file);
  Reload out = { NULL, NULL };
  /* Called from GLib callbacks: nothing may unwind through them. */
  SCM ok = scm_c_catch (SCM_BOOL_T, reload_body, &out, reload_broke, &out, NULL, NULL);
  reloading = FALSE;
  if (scm_is_false (ok))
    {
      gm_log (NULL, "reload failed: %s", out.error->message);
      g_propagate_error (error, out.error);
      return FALSE;
    }
  if (report)
    *report = out.report;
  else
    g_free (out.report);
  return TRUE;
}

/* ---- Primitives of (guillemot core) for (guillemot repl) ---------------- */

/* (%control-reload) → (#t REPORT-LINE ...) or (#f MESSAGE) */
static SCM
scm_control_reload (void)
{
  char *report = NULL;
  GError *error = NULL;
  SCM result;
  if (gm_control_reload ("REPL", &report, &error))
    {
      g_auto (GStrv) lines = g_strsplit (report, "\n", -1);
      result = SCM_EOL;
      for (guint i = g_strv_length (lines); i > 0; i--)
        result = scm_cons (scm_from_utf8_string (lines[i - 1]), result);
      result = scm_cons (SCM_BOOL_T, result);
      g_free (report);
    }
  else
    {
      result = scm_list_2 (SCM_BOOL_F, scm_from_utf8_string (error->message));
      g_error_free (error);
    }
  return result;
}

/* (%control-rules) → the rule set new sessions get */
static SCM
scm_control_rules (void)
{
  return installed;
}

/* (%control-install-rules! RULE-SET) */
static SCM
scm_control_install_rules (SCM rule_set)
{
  /* Anything else would break every new session: check before installing. */
  SCM rule_type = scm_c_private_ref ("guillemot", "<rule>");
  SCM_ASSERT_TYPE (scm_ilength (rule_set) >= 0, rule_set, SCM_ARG1, "%control-install-rules!",
                   "list of rules");
  for (SCM r = rule_set; scm_is_pair (r); r = scm_cdr (r))
    SCM_ASSERT_TYPE (SCM_STRUCTP (scm_car (r))
                     && scm_is_eq (SCM_STRUCT_VTABLE (scm_car (r)), rule_type), rule_set,
                     SCM_ARG1, "%control-install-rules!", "list of rules");
  install_rules (rule_set);
  return SCM_UNSPECIFIED;
}

static SCM
opt_string (const char *s)
{
  return s ? scm_from_utf8_string (s) : SCM_BOOL_F;
}

static void
add_session (const GmServerSessionInfo *info, gpointer data)
{
  SCM *list = data;
  GmSession *s = info->session;
  const GmConnInfo *c = gm_session_conn (s);
  const GmEnvelope *env = gm_session_envelope (s);
  SCM rcpts = gm_policy_recipients (env);
  SCM alist = SCM_EOL;
#define FIELD(key, value) alist = scm_acons (scm_from_utf8_symbol (key), (value), alist)
  FIELD ("idle", scm_from_double (info->idle / 1e6));
  FIELD ("connected", scm_from_double (info->connected / 1e6));
  FIELD ("state", scm_from_utf8_symbol (info->state));
  FIELD ("queue-id", opt_string (env ? env->id : NULL));
  FIELD ("recipients", rcpts);
  FIELD ("sender", opt_string (env ? env->sender : NULL));
  FIELD ("esmtp", scm_from_bool (gm_session_esmtp (s)));
  FIELD ("helo", opt_string (gm_session_helo (s)));
  FIELD ("local-port", scm_from_uint16 (c->local_port));
  FIELD ("local-address", scm_from_utf8_string (c->local_address));
  FIELD ("client-port", scm_from_uint16 (c->client_port));
  FIELD ("client-address", scm_from_utf8_string (c->client_address));
#undef FIELD
  *list = scm_cons (alist, *list);
}

/* (%control-sessions) → one association list per live connection, oldest first */
static SCM
scm_control_sessions (void)
{
  SCM list = SCM_EOL;
  gm_server_foreach_session (add_session, &list);
  return scm_reverse_x (list, SCM_EOL);
}

static SCM
define_primitives (void *unused)
{
  scm_c_define_gsubr ("%control-reload", 0, 0, 0, (scm_t_subr) scm_control_reload);
  scm_c_define_gsubr ("%control-rules", 0, 0, 0, (scm_t_subr) scm_control_rules);
  scm_c_define_gsubr ("%control-install-rules!", 1, 0, 0, (scm_t_subr) scm_control_install_rules);
  scm_c_define_gsubr ("%control-sessions", 0, 0, 0, (scm_t_subr) scm_control_sessions);
  scm_c_export ("%control-reload", "%control-rules", "%control-install-rules!",
                "%control-sessions", NULL);
  return SCM_UNSPECIFIED;
}

/* ---- The control directory --------------------------------------------- */

static gboolean
errno_error (GError **error, int e, const char *what, const char *path)
{
  g_set_error (error, G_IO_ERROR, g_io_error_from_errno (e), "%s %s: %s", what, path,
               g_strerror (e));
  return FALSE;
}

/* DIR exists, is a directory (not a link) of ours, mode 0700. */
static gboolean
make_private_dir (const char *dir, GError **error)
{
  struct stat st;
  if (mkdir (dir, 0700) < 0 && errno != EEXIST)
    return errno_error (error, errno, "mkdir", dir);
  if (lstat (dir, &st) < 0)
    return errno_error (error, errno, "stat", dir);
  if (!S_ISDIR (st.st_mode) || st.st_uid != geteuid ())
    {
      g_set_error (error, GM_CONTROL_ERROR, 0,
                   "%s must be a directory owned by the server's user (uid %u)", dir,
                   (unsigned) geteuid ());
      return FALSE;
    }
  if ((st.st_mode & 07777) != 0700 && chmod (dir, 0700) < 0)
    return errno_error (error, errno, "chmod 0700", dir);
  return TRUE;
}

static gboolean
unix_address (const char *path, struct sockaddr_un *sa, GError **error)
{
  memset (sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (strlen (path) >= sizeof sa->sun_path)
    {
      g_set_error (error, GM_CONTROL_ERROR, 0,
                   "%s: the path is longer than a Unix socket allows (%zu bytes); "
                   "choose a shorter state-dir", path, sizeof sa->sun_path - 1);
      return FALSE;
    }
  strcpy (sa->sun_path, path);
  return TRUE;
}

/* A listening socket at PATH, mode 0600. A socket left by a server that is
 * gone is replaced; one that answers means another server uses this
 * state-dir. */
static int
listen_unix (const char *path, gboolean nonblock, GError **error)
{
  struct sockaddr_un sa;
  struct stat st;
  if (!unix_address (path, &sa, error))
    return -1;
  if (lstat (path, &st) == 0)
    {
      if (!S_ISSOCK (st.st_mode))
        {
          g_set_error (error, GM_CONTROL_ERROR, 0, "%s exists and is not a socket", path);
          return -1;
        }
      int probe = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      gboolean answers = probe >= 0 && connect (probe, (struct sockaddr *) &sa, sizeof sa) == 0;
      if (probe >= 0)
        close (probe);
      if (answers)
        {
          g_set_error (error, GM_CONTROL_ERROR, 0,
                       "%s answers: another server is running with this state-dir", path);
          return -1;
        }
      if (unlink (path) < 0 && errno != ENOENT)
        {
          errno_error (error, errno, "unlink", path);
          return -1;
        }
    }
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0)
    {
      errno_error (error, errno, "socket for", path);
      return -1;
    }
  /* The directory is 0700: nobody else can reach the socket before the chmod. */
  if (bind (fd, (struct sockaddr *) &sa, sizeof sa) < 0 || chmod (path, 0600) < 0
      || listen (fd, 16) < 0)
    {
      int e = errno;
      close (fd);
      errno_error (error, e, "listen on", path);
      return -1;
    }
  return fd;
}

/* ---- control.sock ------------------------------------------------------ */

typedef struct
{
  int fd;
  guint source;
  guint timer;
  GString *in;
} Request;

static void
request_free (Request *r)
{
  if (r->source)
    g_source_remove (r->source);
  if (r->timer)
    g_source_remove (r->timer);
  close (r->fd);
  g_string_free (r->in, TRUE);
  g_free (r);
}

static void
request_answer (Request *r, gboolean ok, const char *text)
{
  g_autofree char *answer = g_strdup_printf ("%s\n%s\n", ok ? "ok" : "error", text);
  /* A few hundred bytes into an empty socket buffer: it does not block. */
  gsize done = 0, len = strlen (answer);
  while (done < len)
    {
      ssize_t n = send (r->fd, answer + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break;
      done += n;
    }
  /* Unread input would make the close a reset, which may lose the answer. */
  char buf[1024];
  for (int i = 0; i < 64 && recv (r->fd, buf, sizeof buf, MSG_DONTWAIT) > 0; i++)
    ;
  request_free (r);
}

static void
request_handle (Request *r, const char *line)
{
  if (strcmp (line, "reload") == 0)
    {
      g_autofree char *report = NULL;
      g_autoptr (GError) error = NULL;
      if (gm_control_reload ("control.sock", &report, &error))
        request_answer (r, TRUE, report);
      else
        request_answer (r, FALSE, error->message);
    }
  else
    {
      g_autofree char *text = g_strdup_printf ("unknown request \"%.64s\" (known: reload)", line);
      request_answer (r, FALSE, text);
    }
}

static gboolean
on_request_timeout (gpointer data)
{
  Request *r = data;
  r->timer = 0;
  request_answer (r, FALSE, "no request received in time");
  return G_SOURCE_REMOVE;
}

static gboolean
on_request_input (gint fd, GIOCondition cond, gpointer data)
{
  Request *r = data;
  char buf[REQUEST_MAX];
  ssize_t n = recv (fd, buf, sizeof buf, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return G_SOURCE_CONTINUE;
  if (n > 0)
    g_string_append_len (r->in, buf, n);
  char *nl = memchr (r->in->str, '\n', r->in->len);
  if (n > 0 && !nl && r->in->len < REQUEST_MAX)
    return G_SOURCE_CONTINUE;   /* the rest of the line is coming */
  r->source = 0;                /* this source ends with the request */
  if (nl)
    g_string_truncate (r->in, nl - r->in->str);
  if (r->in->len > 0 && r->in->str[r->in->len - 1] == '\r')
    g_string_truncate (r->in, r->in->len - 1);
  if (n < 0 || (!nl && r->in->len == 0))
    request_free (r);           /* an error, or connected and left */
  else if (!nl && r->in->len >= REQUEST_MAX)
    request_answer (r, FALSE, "request too long");
  else
    request_handle (r, r->in->str);  /* a line, or what came before the end */
  return G_SOURCE_REMOVE;
}

/* Only the server's user (or root) may ask; the socket's mode says the same. */
static gboolean
peer_allowed (int fd)
{
#ifdef SO_PEERCRED
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
    return cred.uid == geteuid () || cred.uid == 0;
#endif
  return TRUE;
}

static gboolean
on_control_accept (gint lfd, GIOCondition cond, gpointer data)
{
  for (;;)
    {
      int fd = accept4 (lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0)
        {
          if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
            gm_log (NULL, "control: accept: %s", g_strerror (errno));
          break;
        }
      Request *r = g_new0 (Request, 1);
      r->fd = fd;
      r->in = g_string_new (NULL);
      if (!peer_allowed (fd))
        {
          gm_log (NULL, "control: request from another user refused");
          request_answer (r, FALSE, "permission denied");
          continue;
        }
      r->source = g_unix_fd_add (fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_request_input, r);
      r->timer = g_timeout_add_seconds (REQUEST_TIMEOUT_S, on_request_timeout, r);
    }
  return G_SOURCE_CONTINUE;
}

/* ---- The REPL ---------------------------------------------------------- */

static SCM
call_poll (void *unused)
{
  return scm_call_0 (poll_repl);
}

static SCM
log_exception (void *what, SCM key, SCM args)
{
  SCM port = scm_open_output_string ();
  scm_print_exception (port, SCM_BOOL_F, key, args);
  char *text = scm_to_utf8_string (scm_get_output_string (port));
  g_strchomp (text);
  g_strdelimit (text, "\n", ' ');
  gm_log (NULL, "control: %s: %s", (const char *) what, text);
  free (text);
  return SCM_BOOL_F;
}

static gboolean
on_poll (gpointer data)
{
  /* Nothing escapes into GLib (STYLE.md §11). */
  scm_c_catch (SCM_BOOL_T, call_poll, NULL, log_exception,
               (void *) "REPL", NULL, NULL);
  free_retired ();
  return G_SOURCE_CONTINUE;
}

typedef struct
{
  int fd;
  const char *path;
} ReplStart;

/* The Scheme side: primitives, the rules in force, the REPL server. */
static SCM
start_scheme (void *data)
{
  ReplStart *rs = data;
  scm_c_call_with_current_module (scm_c_resolve_module ("guillemot core"), define_primitives,
                                  NULL);
  rules_variable = scm_c_private_variable ("guillemot", "rules");
  scm_gc_protect_object (rules_variable);
  set_installed (scm_call_0 (scm_c_private_ref ("guillemot", "%loaded-rules")));
  SCM port = scm_fdes_to_port (rs->fd, "r+0", scm_from_utf8_string (rs->path));
  scm_call_1 (scm_c_private_ref ("guillemot repl", "%start-repl-server"), port);
  poll_repl = scm_c_private_ref ("guillemot repl", "%poll-repl");
  scm_gc_protect_object (poll_repl);
  return SCM_BOOL_T;
}

static SCM
start_failed (void *data, SCM key, SCM args)
{
  SCM port = scm_open_output_string ();
  scm_print_exception (port, SCM_BOOL_F, key, args);
  return scm_get_output_string (port);
}

/* ---- Start and stop ---------------------------------------------------- */

gboolean
gm_control_start (const char *file, const char *const *overrides, GError **error)
{
  g_return_val_if_fail (config_file == NULL, FALSE);
  g_autofree char *dir = g_build_filename (gm_config.state_dir, "control", NULL);
  if (!make_private_dir (dir, error))
    return FALSE;
  control_path = g_build_filename (dir, "control.sock", NULL);
  repl_path = g_build_filename (dir, "repl.sock", NULL);
  control_fd = listen_unix (control_path, TRUE, error);
  if (control_fd < 0)
    return FALSE;
  int repl_fd = listen_unix (repl_path, FALSE, error);
  if (repl_fd < 0)
    {
      gm_control_stop ();
      return FALSE;
    }

  ReplStart rs = { repl_fd, repl_path };
  SCM result = scm_internal_catch (SCM_BOOL_T, start_scheme, &rs, start_failed, NULL);
  if (scm_is_string (result))
    {
      char *text = scm_to_utf8_string (result);
      g_set_error (error, GM_CONTROL_ERROR, 0, "cannot start the REPL on %s: %s", repl_path,
                   g_strchomp (text));
      free (text);
      gm_control_stop ();
      return FALSE;
    }
  config_file = g_strdup (file);
  config_overrides = g_strdupv ((char **) overrides);
  poll_source = g_timeout_add (REPL_POLL_MS, on_poll, NULL);
  control_source = g_unix_fd_add (control_fd, G_IO_IN, on_control_accept, NULL);
  gm_log (NULL, "control: reload on %s, REPL on %s", control_path, repl_path);
  return TRUE;
}

void
gm_control_stop (void)
{
  if (poll_source)
    g_source_remove (poll_source);
  if (control_source)
    g_source_remove (control_source);
  poll_source = control_source = 0;
  if (control_fd >= 0)
    close (control_fd);
  control_fd = -1;
  /* The REPL's threads end with the process; its socket file goes now. */
  if (control_path)
    unlink (control_path);
  if (repl_path)
    unlink (repl_path);
}

/* ---- The client subcommands -------------------------------------------- */

static int
connect_socket (const char *state_dir, const char *name, const char *command)
{
  g_autofree char *path = g_build_filename (state_dir, "control", name, NULL);
  struct sockaddr_un sa;
  g_autoptr (GError) error = NULL;
  if (!unix_address (path, &sa, &error))
    {
      fprintf (stderr, "guillemot %s: %s\n", command, error->message);
      return -1;
    }
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && connect (fd, (struct sockaddr *) &sa, sizeof sa) == 0)
    return fd;
  int e = errno;
  if (fd >= 0)
    close (fd);
  fprintf (stderr, "guillemot %s: cannot reach the server at %s: %s\n"
           "(is \"guillemot serve\" running with this state-dir?)\n", command, path,
           g_strerror (e));
  return -1;
}

static gboolean
write_all (int fd, const char *data, gsize len)
{
  while (len > 0)
    {
      ssize_t n = write (fd, data, len);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return FALSE;
      data += n;
      len -= n;
    }
  return TRUE;
}

int
gm_control_client_reload (const char *state_dir)
{
  signal (SIGPIPE, SIG_IGN);
  int fd = connect_socket (state_dir, "control.sock", "reload");
  if (fd < 0)
    return 1;
  GString *answer = g_string_new (NULL);
  gboolean complete = FALSE;
  if (write_all (fd, "reload\n", 7))
    {
      gint64 deadline = g_get_monotonic_time () + CLIENT_TIMEOUT_S * G_USEC_PER_SEC;
      for (;;)
        {
          struct pollfd p = { fd, POLLIN, 0 };
          int wait_ms = (int) ((deadline - g_get_monotonic_time ()) / 1000);
          if (wait_ms <= 0 || poll (&p, 1, wait_ms) == 0)
            break;
          char buf[4096];
          ssize_t n = read (fd, buf, sizeof buf);
          if (n < 0 && errno == EINTR)
            continue;
          if (n <= 0)
            {
              complete = n == 0;
              break;
            }
          g_string_append_len (answer, buf, n);
        }
    }
  close (fd);
  int status = 1;
  if (!complete)
    fprintf (stderr, "guillemot reload: no answer from the server within %ds\n",
             CLIENT_TIMEOUT_S);
  else if (g_str_has_prefix (answer->str, "ok\n"))
    {
      fputs (answer->str + 3, stdout);
      status = 0;
    }
  else if (g_str_has_prefix (answer->str, "error\n"))
    {
      fputs (answer->str + 6, stderr);
      fputs ("guillemot reload: the server keeps its previous configuration\n", stderr);
    }
  else
    fprintf (stderr, "guillemot reload: unexpected answer from the server: \"%.80s\"\n",
             answer->str);
  g_string_free (answer, TRUE);
  return status;
}

/* Relay the terminal and the REPL socket until the server closes it (,quit)
 * or the terminal ends (Ctrl-D). */
int
gm_control_client_repl (const char *state_dir)
{
  signal (SIGPIPE, SIG_IGN);
  int fd = connect_socket (state_dir, "repl.sock", "repl");
  if (fd < 0)
    return 1;
  gboolean input_open = TRUE;
  for (;;)
    {
      struct pollfd p[2] = { { fd, POLLIN, 0 }, { STDIN_FILENO, POLLIN, 0 } };
      if (poll (p, input_open ? 2 : 1, -1) < 0)
        {
          if (errno == EINTR)
            continue;
          break;
        }
      char buf[4096];
      if (p[0].revents)
        {
          ssize_t n = read (fd, buf, sizeof buf);
          if (n < 0 && errno == EINTR)
            continue;
          if (n <= 0 || !write_all (STDOUT_FILENO, buf, n))
            break;
        }
      if (input_open && p[1].revents)
        {
          ssize_t n = read (STDIN_FILENO, buf, sizeof buf);
          if (n < 0 && errno == EINTR)
            continue;
          if (n <= 0)
            {
              input_open = FALSE;
              shutdown (fd, SHUT_WR);   /* the REPL reads the end and says goodbye */
            }
          else if (!write_all (fd, buf, n))
            break;
        }
    }
  close (fd);
  return 0;
}
