/* watchdog.c — the time limit of rules without a system call per stage.
 *
 * An interval timer armed and disarmed around each stage's Scheme code cost
 * two setitimer(2) calls per stage, the largest share of a stage's overhead.
 * Instead the main thread notes when Scheme code starts (a clock read, no
 * system call), and a thread of its own looks four times per limit; code
 * running past the limit gets SIGALRM on the main thread, whose Scheme
 * handler asks gm_watchdog_overdue() before it interrupts anything: the
 * stage may have ended in between. */
#include "config.h"
#include "watchdog.h"

#include <pthread.h>
#include <signal.h>

#include "settings.h"

static gint64 running_since;    /* monotonic µs, 0 when no Scheme code of a stage runs */
static pthread_t main_thread;

void
gm_watchdog_enter (void)
{
  __atomic_store_n (&running_since, g_get_monotonic_time (), __ATOMIC_RELEASE);
}

void
gm_watchdog_leave (void)
{
  __atomic_store_n (&running_since, 0, __ATOMIC_RELEASE);
}

static gint64
limit_us (void)
{
  return (gint64) gm_config.rule_time_limit * 1000;
}

gboolean
gm_watchdog_overdue (void)
{
  gint64 since = __atomic_load_n (&running_since, __ATOMIC_ACQUIRE);
  return since && g_get_monotonic_time () - since >= limit_us ();
}

static gpointer
watch (gpointer data)
{
  gint64 signalled = 0;         /* the run already told */
  for (;;)
    {
      g_usleep (CLAMP (limit_us () / 4, 1000, 250000));
      gint64 since = __atomic_load_n (&running_since, __ATOMIC_ACQUIRE);
      if (since && since != signalled && g_get_monotonic_time () - since >= limit_us ())
        {
          signalled = since;
          pthread_kill (main_thread, SIGALRM);
        }
    }
  return NULL;
}

void
gm_watchdog_start (void)
{
  static gsize started;
  if (!g_once_init_enter (&started))
    return;
  main_thread = pthread_self ();
  /* The watcher must not take signals meant for the server's threads. */
  sigset_t all, old;
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  g_thread_unref (g_thread_new ("rule-watchdog", watch, NULL));
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  g_once_init_leave (&started, 1);
}
