/* log.c — event log on stderr.
 *
 * Every line: "2026-11-25T12:00:00.123456Z guillemot[PID]: QUEUEID: key=value, ..."
 * written with a single write(2) so that lines from worker threads never interleave. */
#include "config.h"
#include "log.h"

#include <stdio.h>
#include <unistd.h>

static gboolean verbose;
static GmLogWriter writer;

void
gm_log_set_writer (GmLogWriter w)
{
  writer = w;
}

void
gm_log_set_verbose (gboolean v)
{
  verbose = v;
}

gboolean
gm_log_verbose (void)
{
  return verbose;
}

static void
log_line (const char *queue_id, const char *fmt, va_list ap)
{
  if (writer)
    {
      g_autofree char *text = g_strdup_vprintf (fmt, ap);
      g_autofree char *line = queue_id ? g_strdup_printf ("%s: %s", queue_id, text) : g_strdup (text);
      writer (line);
      return;
    }
  char stamp[64];
  gint64 now = g_get_real_time ();
  time_t secs = now / G_USEC_PER_SEC;
  struct tm tm;
  gmtime_r (&secs, &tm);
  strftime (stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);

  /* The server never forks: its pid is asked once, not per line (a system call). */
  static int pid;
  if (!pid)
    pid = getpid ();
  GString *line = g_string_sized_new (160);
  g_string_append_printf (line, "%s.%06dZ guillemot[%d]: ", stamp,
                          (int) (now % G_USEC_PER_SEC), pid);
  if (queue_id)
    g_string_append_printf (line, "%s: ", queue_id);
  g_string_append_vprintf (line, fmt, ap);
  g_string_append_c (line, '\n');
  ssize_t ignored = write (STDERR_FILENO, line->str, line->len);
  (void) ignored;
  g_string_free (line, TRUE);
}

void
gm_log (const char *queue_id, const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  log_line (queue_id, fmt, ap);
  va_end (ap);
}

void
gm_debug (const char *queue_id, const char *fmt, ...)
{
  if (!verbose)
    return;
  va_list ap;
  va_start (ap, fmt);
  log_line (queue_id, fmt, ap);
  va_end (ap);
}
