/* main.c — command line: guillemot SUBCOMMAND [OPTIONS].
 *
 *   serve -c FILE [--set KEY=VALUE]...   run in the foreground, log to stderr
 *   check-config -c FILE [--set ...]     load the configuration, report errors
 *   --version, --help                    */
#include "config.h"

#include <libguile.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "log.h"
#include "policy.h"
#include "queue.h"
#include "scm-config.h"
#include "server.h"
#include "settings.h"
#include "spool.h"
#include "workers.h"

typedef struct
{
  const char *command;
  const char *config_file;
  GPtrArray *overrides;         /* "KEY=VALUE" */
  int status;
} Invocation;

static const char usage[] =
  "Usage: guillemot COMMAND [OPTION]...\n"
  "Guillemot, a mail transfer agent configured and programmed in Guile Scheme.\n"
  "\n"
  "Commands:\n"
  "  serve -c FILE          run the server in the foreground, logging to stderr\n"
  "  check-config -c FILE   load FILE and report the first error as FILE:LINE:COLUMN\n"
  "\n"
  "Options:\n"
  "  -c, --config FILE      the configuration file (Scheme)\n"
  "      --set KEY=VALUE    override a setting of define-server, e.g. --set listen=127.0.0.1:2525\n"
  "  -v, --verbose          log more\n"
  "  -h, --help             show this help (after a command: that command's help)\n"
  "      --version          show the version\n";

static const char serve_usage[] =
  "Usage: guillemot serve -c FILE [--set KEY=VALUE]... [-v]\n"
  "Run the server in the foreground with the configuration FILE, logging to stderr.\n"
  "--set overrides a setting of define-server (listen takes a comma-separated list\n"
  "of HOST:PORT and [IPV6]:PORT). SIGTERM or SIGINT stops it gracefully.\n";

static const char check_usage[] =
  "Usage: guillemot check-config -c FILE [--set KEY=VALUE]...\n"
  "Load FILE without serving. Exit 0 when it is valid; otherwise print\n"
  "FILE:LINE:COLUMN: message and exit 1.\n";

static gboolean
load_configuration (Invocation *inv)
{
  g_autoptr (GError) error = NULL;
  gm_config_reset ();
  if (!gm_scm_load_config (inv->config_file, &error))
    {
      fprintf (stderr, "%s\n", error->message);
      return FALSE;
    }
  for (guint i = 0; i < inv->overrides->len; i++)
    if (!gm_config_apply_override (g_ptr_array_index (inv->overrides, i), &error))
      {
        fprintf (stderr, "guillemot: %s\n", error->message);
        return FALSE;
      }
  if (!gm_config_validate (&error))
    {
      fprintf (stderr, "%s: %s\n", inv->config_file, error->message);
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

static void
raise_fd_limit (void)
{
  struct rlimit rl;
  if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max)
    {
      rl.rlim_cur = rl.rlim_max;
      setrlimit (RLIMIT_NOFILE, &rl);
    }
}

static int
serve (Invocation *inv)
{
  g_autoptr (GError) error = NULL;
  signal (SIGPIPE, SIG_IGN);
  raise_fd_limit ();
  if (!gm_spool_init (gm_config.state_dir, &error))
    {
      gm_log (NULL, "fatal: %s", error->message);
      return 1;
    }
  gm_workers_init (gm_config.workers);
  if (!gm_server_listen (&error))
    {
      gm_log (NULL, "fatal: %s", error->message);
      return 1;
    }
  if (!gm_queue_start (&error))
    {
      gm_log (NULL, "fatal: %s", error->message);
      return 1;
    }
  gm_log (NULL, "started: Guillemot %s, hostname=%s, state-dir=%s", PACKAGE_VERSION,
          gm_config.hostname, gm_config.state_dir);
  return gm_server_run ();
}

static void *
run_with_guile (void *data)
{
  Invocation *inv = data;
  gm_scm_init_config ();
  if (!load_configuration (inv))
    {
      inv->status = 1;
      return NULL;
    }
  gm_policy_init ();
  if (strcmp (inv->command, "check-config") == 0)
    {
      printf ("%s: configuration is valid\n", inv->config_file);
      inv->status = 0;
    }
  else
    inv->status = serve (inv);
  return NULL;
}

int
main (int argc, char **argv)
{
  setlocale (LC_ALL, "");
  /* Dates in headers and numbers in logs follow RFC 5322 and the log format,
   * not the administrator's language. */
  setlocale (LC_TIME, "C");
  setlocale (LC_NUMERIC, "C");
  Invocation inv = { NULL, NULL, g_ptr_array_new (), 0 };
  const char *command_usage = usage;

  if (argc < 2)
    {
      fputs (usage, stderr);
      return 2;
    }
  for (int i = 1; i < argc; i++)
    {
      const char *a = argv[i];
      if (strcmp (a, "--version") == 0)
        {
          printf ("guillemot %s\n", PACKAGE_VERSION);
          return 0;
        }
      else if (strcmp (a, "--help") == 0 || strcmp (a, "-h") == 0)
        {
          fputs (command_usage, stdout);
          return 0;
        }
      else if (strcmp (a, "-c") == 0 || strcmp (a, "--config") == 0)
        {
          if (++i == argc)
            goto missing;
          inv.config_file = argv[i];
        }
      else if (g_str_has_prefix (a, "--config="))
        inv.config_file = a + strlen ("--config=");
      else if (strcmp (a, "--set") == 0)
        {
          if (++i == argc)
            goto missing;
          g_ptr_array_add (inv.overrides, argv[i]);
        }
      else if (g_str_has_prefix (a, "--set="))
        g_ptr_array_add (inv.overrides, (char *) a + strlen ("--set="));
      else if (strcmp (a, "-v") == 0 || strcmp (a, "--verbose") == 0)
        gm_log_set_verbose (TRUE);
      else if (!inv.command && a[0] != '-')
        {
          inv.command = a;
          if (strcmp (a, "serve") == 0)
            command_usage = serve_usage;
          else if (strcmp (a, "check-config") == 0)
            command_usage = check_usage;
          else
            {
              fprintf (stderr, "guillemot: unknown command \"%s\"\n\n%s", a, usage);
              return 2;
            }
        }
      else
        {
          fprintf (stderr, "guillemot: unknown option \"%s\"\n\n%s", a, command_usage);
          return 2;
        }
      continue;
    missing:
      fprintf (stderr, "guillemot: %s needs a value\n", a);
      return 2;
    }
  if (!inv.command)
    {
      fputs (usage, stderr);
      return 2;
    }
  if (!inv.config_file)
    {
      fprintf (stderr, "guillemot %s: -c FILE is required\n\n%s", inv.command, command_usage);
      return 2;
    }
  scm_with_guile (run_with_guile, &inv);
  g_ptr_array_free (inv.overrides, TRUE);
  return inv.status;
}
