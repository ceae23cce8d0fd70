/* scm-config.c — Scheme side of the configuration: the primitives of
 * (guillemot core) that define-server, local-domains and deliver-local call,
 * checked against the settings table; and loading the file through
 * (guillemot config), which reports errors with file, line and column. */
#include "config.h"
#include "scm-config.h"

#include <libguile.h>
#include <string.h>
#include <gio/gio.h>

#include "policy.h"
#include "scm-mime.h"
#include "settings.h"

static SCM config_error_key;

/* Throw 'config-error with a formatted message; frees nothing: callers
 * release native state first (STYLE.md §10). */
static void G_GNUC_NORETURN
throw_config_error (const char *message)
{
  scm_throw (config_error_key, scm_list_1 (scm_from_utf8_string (message)));
  g_assert_not_reached ();
}

static char **
string_list_to_strv (SCM list, const char *what)
{
  if (scm_is_string (list))
    list = scm_list_1 (list);
  if (scm_is_false (scm_list_p (list)))
    {
      g_autofree char *m = g_strdup_printf ("%s expects a list of strings", what);
      throw_config_error (m);
    }
  gsize n = scm_to_size_t (scm_length (list));
  char **v = g_new0 (char *, n + 1);
  for (gsize i = 0; i < n; i++, list = scm_cdr (list))
    {
      SCM item = scm_car (list);
      if (!scm_is_string (item))
        {
          g_strfreev (v);
          g_autofree char *m = g_strdup_printf ("%s expects a list of strings", what);
          throw_config_error (m);
        }
      char *s = scm_to_utf8_string (item);
      v[i] = g_strdup (s);
      free (s);
    }
  return v;
}

/* (%server-set! 'name value) */
static SCM
server_set (SCM name, SCM value)
{
  SCM_ASSERT_TYPE (scm_is_symbol (name), name, SCM_ARG1, "%server-set!", "symbol");
  char *cname = scm_to_utf8_string (scm_symbol_to_string (name));
  const GmSetting *s = gm_setting_lookup (cname);
  free (cname);
  if (!s)
    {
      char *n = scm_to_utf8_string (scm_symbol_to_string (name));
      g_autofree char *m = g_strdup_printf ("define-server: unknown setting #:%s", n);
      free (n);
      throw_config_error (m);
    }
  GError *error = NULL;
  gboolean ok;
  switch (s->type)
    {
    case GM_SETTING_STRING:
    case GM_SETTING_CHOICE:
      if (scm_is_symbol (value))
        value = scm_symbol_to_string (value);
      if (!scm_is_string (value))
        {
          g_autofree char *m = g_strdup_printf ("define-server: #:%s expects a %s", s->name,
                                                s->type == GM_SETTING_CHOICE ? "symbol" : "string");
          throw_config_error (m);
        }
      {
        char *text = scm_to_utf8_string (value);
        ok = gm_setting_set_text (s, text, &error);
        free (text);
      }
      break;
    case GM_SETTING_STRING_LIST:
      {
        g_autofree char *what = g_strdup_printf ("define-server: #:%s", s->name);
        char **v = string_list_to_strv (value, what);
        ok = gm_setting_set_strv (s, (const char *const *) v, &error);
        g_strfreev (v);
      }
      break;
    default:
      if (!scm_is_exact_integer (value) || scm_is_true (scm_negative_p (value))
          || !scm_is_unsigned_integer (value, 0, G_MAXUINT64))
        {
          g_autofree char *m = g_strdup_printf ("define-server: #:%s expects a non-negative integer%s",
                                                s->name, s->type == GM_SETTING_BYTES ? " (bytes)"
                                                : s->type == GM_SETTING_SECONDS ? " (seconds)" : "");
          throw_config_error (m);
        }
      ok = gm_setting_set_number (s, scm_to_uint64 (value), &error);
      break;
    }
  if (!ok)
    {
      g_autofree char *m = g_strdup_printf ("define-server: %s", error->message);
      g_error_free (error);
      throw_config_error (m);
    }
  return SCM_UNSPECIFIED;
}

/* (%set-local-domains! '("example.test" ...)) */
static SCM
set_local_domains (SCM list)
{
  char **v = string_list_to_strv (list, "local-domains");
  for (char **d = v; *d; d++)
    {
      char *lower = g_ascii_strdown (*d, -1);
      g_free (*d);
      *d = lower;
    }
  g_strfreev (gm_config.local_domains);
  gm_config.local_domains = v;
  return SCM_UNSPECIFIED;
}

/* (%set-local-delivery! 'maildir "mail/~a/Maildir") */
static SCM
set_local_delivery (SCM kind, SCM template)
{
  SCM_ASSERT_TYPE (scm_is_symbol (kind), kind, SCM_ARG1, "%set-local-delivery!", "symbol");
  SCM_ASSERT_TYPE (scm_is_string (template), template, SCM_ARG2, "%set-local-delivery!", "string");
  GmTransport t;
  if (scm_is_eq (kind, scm_from_utf8_symbol ("maildir")))
    t = GM_TRANSPORT_MAILDIR;
  else if (scm_is_eq (kind, scm_from_utf8_symbol ("mbox")))
    t = GM_TRANSPORT_MBOX;
  else
    throw_config_error ("deliver-local: the mailbox must be (maildir TEMPLATE) or (mbox TEMPLATE)");
  char *text = scm_to_utf8_string (template);
  const char *problem = !*text ? "deliver-local: the mailbox template is empty" : NULL;
  for (const char *p = text; *p && !problem; p++)
    if (p[0] == '~' && p[1] != 'a' && p[1] != '~')
      problem = "deliver-local: in a mailbox template, ~a stands for the local part and ~~ for ~; "
        "no other ~ escape is known";
    else if (p[0] == '~')
      p++;
  if (problem)
    {
      free (text);
      throw_config_error (problem);
    }
  gm_config.local_transport = t;
  g_free (gm_config.local_template);
  gm_config.local_template = g_strdup (text);
  free (text);
  return SCM_UNSPECIFIED;
}

/* (%state-dir) → the state directory (absolute once a configuration is loaded). */
static SCM
state_dir (void)
{
  return scm_from_utf8_string (gm_config.state_dir);
}

/* (%settings) → list of setting names, for define-server's keyword check. */
static SCM
settings_names (void)
{
  gsize n;
  const GmSetting *table = gm_settings_table (&n);
  SCM list = SCM_EOL;
  for (gsize i = n; i > 0; i--)
    list = scm_cons (scm_from_utf8_symbol (table[i - 1].name), list);
  return list;
}

typedef struct
{
  const char *name;
  int req, opt;
  scm_t_subr fn;
} Primitive;

static const Primitive primitives[] = {
  { "%server-set!", 2, 0, (scm_t_subr) server_set },
  { "%set-local-domains!", 1, 0, (scm_t_subr) set_local_domains },
  { "%set-local-delivery!", 2, 0, (scm_t_subr) set_local_delivery },
  { "%settings", 0, 0, (scm_t_subr) settings_names },
  { "%state-dir", 0, 0, (scm_t_subr) state_dir },
};

static void
define_core (void *unused)
{
  for (gsize i = 0; i < G_N_ELEMENTS (primitives); i++)
    {
      scm_c_define_gsubr (primitives[i].name, primitives[i].req, primitives[i].opt, 0,
                          primitives[i].fn);
      scm_c_export (primitives[i].name, NULL);
    }
  gm_policy_define_primitives ();
  gm_scm_init_mime ();
}

static void
append_to_path (const char *variable, const char *dir)
{
  SCM var = scm_c_lookup (variable);
  SCM list = scm_variable_ref (var);
  scm_variable_set_x (var, scm_append (scm_list_2 (list, scm_list_1 (scm_from_utf8_string (dir)))));
}

void
gm_scm_init_config (void)
{
  /* Installed modules come after GUILE_LOAD_PATH, so that an uninstalled
   * build (make run, make check) uses its own. */
  append_to_path ("%load-path", GM_SCHEME_DIR);
  append_to_path ("%load-compiled-path", GM_CCACHE_DIR);
  config_error_key = scm_from_utf8_symbol ("config-error");
  scm_c_define_module ("guillemot core", define_core, NULL);
}

static SCM
call_loader (void *file)
{
  SCM load = scm_c_public_ref ("guillemot config", "load-configuration");
  return scm_call_1 (load, scm_from_utf8_string (file));
}

/* An error outside the configuration itself: e.g. (guillemot config) not found. */
static SCM
loader_failed (void *file, SCM key, SCM args)
{
  SCM port = scm_open_output_string ();
  scm_print_exception (port, SCM_BOOL_F, key, args);
  return scm_string_append (scm_list_3 (scm_from_utf8_string ((const char *) file),
                                        scm_from_utf8_string (": cannot load the configuration: "),
                                        scm_get_output_string (port)));
}

gboolean
gm_scm_load_config (const char *file, GError **error)
{
  SCM result = scm_internal_catch (SCM_BOOL_T, call_loader, (void *) file, loader_failed,
                                   (void *) file);
  if (scm_is_false (result))
    return TRUE;
  char *message = scm_to_utf8_string (result);
  g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_FAILED, message);
  free (message);
  return FALSE;
}
