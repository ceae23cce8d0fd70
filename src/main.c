/* main.c — command line: guillemot SUBCOMMAND [OPTIONS].
 *
 *   serve -c FILE [--set KEY=VALUE]...   run in the foreground, log to stderr
 *   check-config -c FILE [--set ...]     load the configuration, report errors
 *   reload -c FILE [--set ...]           ask the running server to reload its configuration
 *   repl -c FILE [--set ...]             attach the terminal to the server's REPL
 *   --version, --help                    */
#include "config.h"

#include <libguile.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "control.h"
#include "dns.h"
#include "log.h"
#include "policy.h"
#include "queue.h"
#include "scm-config.h"
#include "server.h"
#include "settings.h"
#include "spool.h"
#include "test-session.h"
#include "workers.h"

typedef struct
{
  const char *command;
  const char *config_file;
  GPtrArray *overrides;         /* "KEY=VALUE" */
  const char *client;           /* test-session: --client */
  const char *local;            /* test-session: --local */
  const char *input;            /* test-session: the conversation file, or NULL for stdin */
  int status;
} Invocation;

static const char usage[] =
  "Usage: guillemot COMMAND [OPTION]...\n"
  "Guillemot, a mail transfer agent configured and programmed in Guile Scheme.\n"
  "\n"
  "Commands:\n"
  "  serve -c FILE          run the server in the foreground, logging to stderr\n"
  "  check-config -c FILE   load FILE and report the first error as FILE:LINE:COLUMN\n"
  "  reload -c FILE         make the running server load its configuration file again\n"
  "  repl -c FILE           attach to the running server's Guile REPL\n"
  "  test-session -c FILE [CONVERSATION]\n"
  "                         dry run: replies and each rule's verdict, no network, no delivery\n"
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
  "of HOST:PORT and [IPV6]:PORT). SIGTERM or SIGINT stops it gracefully; SIGHUP\n"
  "reloads the configuration file.\n";

static const char check_usage[] =
  "Usage: guillemot check-config -c FILE [--set KEY=VALUE]...\n"
  "Load FILE without serving. Exit 0 when it is valid; otherwise print\n"
  "FILE:LINE:COLUMN: message and exit 1.\n";

static const char reload_usage[] =
  "Usage: guillemot reload -c FILE [--set KEY=VALUE]...\n"
  "Make the running server load its configuration file again (as SIGHUP does),\n"
  "with the --set overrides it was started with. FILE and --set find the server\n"
  "(its state-dir), as serve was given them; FILE is checked first, and an error\n"
  "in it is reported without asking the server.\n"
  "Sessions that start after the reload get the new rules; sessions in progress\n"
  "finish with theirs. Settings apply at once, except listen, state-dir, workers\n"
  "and the dns-* resolver settings, which need a restart (the server warns and\n"
  "keeps them).\n"
  "Exit 0 when the server reloaded; otherwise print the error\n"
  "(FILE:LINE:COLUMN: message) and exit 1: the server keeps its configuration.\n";

static const char test_session_usage[] =
  "Usage: guillemot test-session -c FILE [--client ADDR[:PORT]] [--local ADDR[:PORT]] [CONVERSATION]\n"
  "Run the client lines of CONVERSATION (a file; standard input when absent), one\n"
  "command or message line per line, through the real SMTP state machine and the\n"
  "rules of FILE, as if they came from --client (default 192.0.2.1:40000) to --local\n"
  "(default 192.0.2.25:25). Print each line (>>>), each reply (<<<), each rule's\n"
  "verdict and time, the log, and what would be queued. Nothing is sent, spooled or\n"
  "delivered; rules that wait (pause, DNS) really wait. IPv6: --client [2001:db8::1]:40000.\n";

static const char repl_usage[] =
  "Usage: guillemot repl -c FILE [--set KEY=VALUE]...\n"
  "Attach the terminal to the running server's Guile REPL, on\n"
  "STATE-DIR/control/repl.sock; FILE and --set find the state-dir, as serve was\n"
  "given them. Inside: (rules), (sessions), (queue), (reload!), and\n"
  "(rule STAGE NAME PROC) to change the rules of new sessions. What you type runs\n"
  "in the server's main thread: keep it short. ,quit or Ctrl-D leaves.\n";

static gboolean
load_configuration (Invocation *inv)
{
  g_autoptr (GError) error = NULL;
  if (!gm_control_load (inv->config_file, (const char *const *) inv->overrides->pdata, &error))
    {
      fprintf (stderr, "%s\n", error->message);
      return FALSE;
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
  /* Before anything else uses the state-dir: fails when another server does. */
  if (!gm_control_start (inv->config_file, (const char *const *) inv->overrides->pdata, &error))
    {
      gm_log (NULL, "fatal: %s", error->message);
      return 1;
    }
  gm_workers_init (gm_config.workers);
  if (!gm_server_listen (&error) || !gm_queue_start (&error))
    {
      gm_log (NULL, "fatal: %s", error->message);
      gm_control_stop ();
      return 1;
    }
  gm_log (NULL, "started: Guillemot %s, hostname=%s, state-dir=%s", PACKAGE_VERSION,
          gm_config.hostname, gm_config.state_dir);
  int status = gm_server_run ();
  gm_control_stop ();
  return status;
}

/* The resolver of the rules' DNS lookups, after gm_policy_init(). */
static gboolean
init_dns (Invocation *inv)
{
  g_autoptr (GError) error = NULL;
  if (gm_dns_init (&error))
    return TRUE;
  fprintf (stderr, "%s: %s\n", inv->config_file, error->message);
  inv->status = 1;
  return FALSE;
}

static void *
run_with_guile (void *data)
{
  Invocation *inv = data;
  gm_scm_init_config ();
  if (!load_configuration (inv))
    {
      if (strcmp (inv->command, "reload") == 0)
        fprintf (stderr, "guillemot reload: %s has an error: the server was not asked to reload\n",
                 inv->config_file);
      inv->status = 1;
      return NULL;
    }
  if (strcmp (inv->command, "reload") == 0)
    inv->status = gm_control_client_reload (gm_config.state_dir);
  else if (strcmp (inv->command, "repl") == 0)
    inv->status = gm_control_client_repl (gm_config.state_dir);
  else if (strcmp (inv->command, "test-session") == 0)
    {
      gm_policy_init ();
      if (!init_dns (inv))
        return NULL;
      inv->status = gm_test_session_run (inv->input, inv->client, inv->local);
    }
  else if (strcmp (inv->command, "check-config") == 0)
    {
      gm_policy_init ();
      if (!init_dns (inv))
        return NULL;
      printf ("%s: configuration is valid\n", inv->config_file);
      inv->status = 0;
    }
  else
    {
      gm_policy_init ();
      if (!init_dns (inv))
        return NULL;
      inv->status = serve (inv);
    }
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
  Invocation inv = { NULL, NULL, g_ptr_array_new (), NULL, NULL, NULL, 0 };
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
      else if (strcmp (a, "--client") == 0 || strcmp (a, "--local") == 0)
        {
          if (++i == argc)
            goto missing;
          *(strcmp (a, "--client") == 0 ? &inv.client : &inv.local) = argv[i];
        }
      else if (inv.command && strcmp (inv.command, "test-session") == 0 && a[0] != '-' && !inv.input)
        inv.input = a;
      else if (!inv.command && a[0] != '-')
        {
          inv.command = a;
          if (strcmp (a, "serve") == 0)
            command_usage = serve_usage;
          else if (strcmp (a, "check-config") == 0)
            command_usage = check_usage;
          else if (strcmp (a, "reload") == 0)
            command_usage = reload_usage;
          else if (strcmp (a, "repl") == 0)
            command_usage = repl_usage;
          else if (strcmp (a, "test-session") == 0)
            command_usage = test_session_usage;
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
  g_ptr_array_add (inv.overrides, NULL);       /* a NULL-terminated list from here on */
  /* scm_with_guile returns NULL, after printing it, when a Scheme error
   * escapes: that is a failure, never a clean exit. */
  inv.status = -1;
  scm_with_guile (run_with_guile, &inv);
  g_ptr_array_free (inv.overrides, TRUE);
  if (inv.status == -1)
    {
      gm_log (NULL, "fatal: a Scheme error escaped (printed above); exiting with status 70");
      return 70;
    }
  return inv.status;
}
