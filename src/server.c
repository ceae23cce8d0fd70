/* server.c — listeners, accepted connections, limits and shutdown.
 *
 * The I/O layer around the session state machine: reads bytes, feeds the
 * session, writes its replies, runs the spool job it asks for on a worker
 * thread, and applies the connection limits and timeouts. One GLib source per
 * connection; one 1-second timer checks every connection's deadline. SIGHUP
 * reloads the configuration (control.c).
 *
 * Deadlines are per request, as Postfix's smtpd_per_request_deadline: a
 * command line must be whole within command-timeout of the end of the one
 * before (a byte that does not complete it does not restart the clock), and
 * message data must keep up min-data-rate, each read adding N / rate seconds
 * to the time left, never beyond data-timeout (smtpd_min_data_rate). A
 * client trickling a byte at a time is so disconnected after the timeout
 * instead of never. */
#include "config.h"
#include "server.h"

#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <glib-unix.h>
#include <gio/gio.h>

#include "control.h"
#include "log.h"
#include "policy.h"
#include "queue.h"
#include "settings.h"
#include "smtp-reply.h"
#include "smtp-session.h"
#include "spool.h"
#include "workers.h"

#define MAX_PENDING_OUTPUT GM_SESSION_OUTPUT_LIMIT   /* stop reading while this much is unsent */
#define ACCEPT_PAUSE_MS 1000             /* out of file descriptors: wait before accepting again */

typedef struct
{
  int fd;
  guint source;
} Listener;

typedef struct Conn Conn;
typedef struct
{
  GSource base;
  Conn *conn;
} ConnSource;

struct Conn
{
  int fd;
  GSource *source;              /* one per connection; its events change, it stays */
  gpointer fd_tag;              /* NULL once the peer is gone while busy */
  GIOCondition watching;
  GmSession *session;
  char client[INET6_ADDRSTRLEN];
  guint16 client_port;
  gint64 connected;             /* monotonic µs */
  gint64 last_activity;         /* monotonic µs: the last byte read */
  gint64 deadline;              /* monotonic µs: 421 4.4.2 when reached */
  guint64 requests;             /* gm_session_requests () when the deadline was set */
  gboolean reading_data;        /* ... and gm_session_reading_data () */
  gboolean busy;                /* a spool write or the rules are running for it */
  gboolean waiting_rules;       /* busy: its rules wait for an operation (pause, DNS...) */
  gboolean closing;             /* flush, then close */
  GList link;
};

static GArray *listeners;       /* of Listener */
static GQueue conns = G_QUEUE_INIT;
static GHashTable *per_client;  /* client address -> count */
static GMainLoop *loop;
static gboolean shutting_down;
static gint64 shutdown_deadline;
static guint accept_resume;     /* timer while accepting is paused (EMFILE) */

static void conn_update_watch (Conn *c);
static void conn_close (Conn *c);

/* ---- Listeners -------------------------------------------------------- */

static gboolean on_accept (gint fd, GIOCondition cond, gpointer data);

/* GLib (2.74) blocks a source while it is dispatched, taking its
 * descriptors out of the poll set and back, and each change wakes the loop
 * up through its eventfd: two write(2)s per event, a dozen per message.
 * Nothing here iterates the loop from inside a dispatch, so the guard
 * against recursion is not needed. */
static void
no_self_wakeups (GSource *source)
{
  g_source_set_can_recurse (source, TRUE);
}

/* Watch a listening socket for connections. */
static guint
watch_listener (int fd)
{
  guint id = g_unix_fd_add (fd, G_IO_IN, on_accept, NULL);
  no_self_wakeups (g_main_context_find_source_by_id (NULL, id));
  return id;
}

static gboolean
listen_one (const char *item, GError **error)
{
  g_autofree char *host = NULL;
  guint16 port;
  if (!gm_parse_listen (item, &host, &port, error))
    return FALSE;
  struct sockaddr_storage ss = { 0 };
  socklen_t len;
  struct sockaddr_in *sin = (struct sockaddr_in *) &ss;
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *) &ss;
  if (inet_pton (AF_INET, host, &sin->sin_addr) == 1)
    {
      sin->sin_family = AF_INET;
      sin->sin_port = htons (port);
      len = sizeof *sin;
    }
  else if (inet_pton (AF_INET6, host, &sin6->sin6_addr) == 1)
    {
      sin6->sin6_family = AF_INET6;
      sin6->sin6_port = htons (port);
      len = sizeof *sin6;
    }
  else
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                   "listen %s: \"%s\" is not a numeric IPv4 or IPv6 address", item, host);
      return FALSE;
    }
  int fd = socket (ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd < 0)
    goto fail;
  setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ss.ss_family == AF_INET6)
    setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (bind (fd, (struct sockaddr *) &ss, len) < 0 || listen (fd, 1024) < 0)
    goto fail;
  Listener l = { fd, watch_listener (fd) };
  g_array_append_val (listeners, l);
  gm_log (NULL, "listening on %s", item);
  return TRUE;
fail:
  {
    int e = errno;
    if (fd >= 0)
      close (fd);
    g_set_error (error, G_IO_ERROR, g_io_error_from_errno (e), "listen %s: %s", item,
                 g_strerror (e));
  }
  return FALSE;
}

gboolean
gm_server_listen (GError **error)
{
  listeners = g_array_new (FALSE, FALSE, sizeof (Listener));
  per_client = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  struct rlimit rl;
  guint64 wanted = (guint64) gm_config.max_connections + 64;
  if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < wanted)
    gm_log (NULL, "warning: the open file limit (%llu) is below max-connections + 64 (%llu): "
            "connections past it wait in the listen backlog", (unsigned long long) rl.rlim_cur,
            (unsigned long long) wanted);
  for (char **l = gm_config.listen; *l; l++)
    if (!listen_one (*l, error))
      return FALSE;
  return TRUE;
}

static void
close_listeners (void)
{
  if (accept_resume)
    g_clear_handle_id (&accept_resume, g_source_remove);
  for (guint i = 0; i < listeners->len; i++)
    {
      Listener *l = &g_array_index (listeners, Listener, i);
      if (l->source)
        g_source_remove (l->source);
      close (l->fd);
    }
  g_array_set_size (listeners, 0);
}

/* Out of file descriptors (or memory), accept() fails and leaves the
 * connection in the backlog, so the listener stays readable: accepting again
 * at once would spin and log without end. Accepting stops instead, until a
 * connection closes or ACCEPT_PAUSE_MS pass; the waiting clients stay in
 * the kernel's backlog meanwhile. */
static gboolean resume_accepting (gpointer data);

static void
pause_accepting (int error)
{
  if (accept_resume)
    return;
  gm_log (NULL, "accept: %s; not accepting connections for %ums", g_strerror (error),
          ACCEPT_PAUSE_MS);
  for (guint i = 0; i < listeners->len; i++)
    {
      Listener *l = &g_array_index (listeners, Listener, i);
      g_clear_handle_id (&l->source, g_source_remove);
    }
  accept_resume = g_timeout_add (ACCEPT_PAUSE_MS, resume_accepting, NULL);
}

static gboolean
resume_accepting (gpointer data)
{
  accept_resume = 0;
  for (guint i = 0; i < listeners->len; i++)
    {
      Listener *l = &g_array_index (listeners, Listener, i);
      if (!l->source)
        l->source = watch_listener (l->fd);
    }
  return G_SOURCE_REMOVE;
}

/* ---- Connections ------------------------------------------------------ */

static void
sockaddr_text (const struct sockaddr_storage *ss, char *buf, guint16 *port)
{
  if (ss->ss_family == AF_INET6)
    {
      const struct sockaddr_in6 *s6 = (const void *) ss;
      if (IN6_IS_ADDR_V4MAPPED (&s6->sin6_addr))
        inet_ntop (AF_INET, &s6->sin6_addr.s6_addr[12], buf, INET6_ADDRSTRLEN);
      else
        inet_ntop (AF_INET6, &s6->sin6_addr, buf, INET6_ADDRSTRLEN);
      *port = ntohs (s6->sin6_port);
    }
  else
    {
      const struct sockaddr_in *s4 = (const void *) ss;
      inet_ntop (AF_INET, &s4->sin_addr, buf, INET6_ADDRSTRLEN);
      *port = ntohs (s4->sin_port);
    }
}

/* Write as much output as the socket takes. FALSE on a write error. */
static gboolean
conn_flush (Conn *c)
{
  GString *out = gm_session_output (c->session);
  gsize done = 0;
  while (done < out->len)
    {
      ssize_t n = send (c->fd, out->str + done, out->len - done, MSG_NOSIGNAL);
      if (n < 0)
        {
          if (errno == EINTR)
            continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
          g_string_truncate (out, 0);
          return FALSE;
        }
      done += n;
    }
  g_string_erase (out, 0, done);
  return TRUE;
}

static void on_conn_io (Conn *c, GIOCondition cond);

static gboolean
conn_dispatch (GSource *source, GSourceFunc callback, gpointer user_data)
{
  Conn *c = ((ConnSource *) source)->conn;
  if (c->fd_tag)
    on_conn_io (c, g_source_query_unix_fd (source, c->fd_tag));
  return G_SOURCE_CONTINUE;
}

static GSourceFuncs conn_source_funcs = { NULL, NULL, conn_dispatch, NULL, NULL, NULL };


static void
conn_update_watch (Conn *c)
{
  GIOCondition want = 0;
  GString *out = gm_session_output (c->session);
  /* A stalled session (commands waiting for the replies to drain) is driven
   * on by the next "writable" event, from the loop: no recursion. */
  gboolean stalled = gm_session_stalled (c->session);
  if (out->len > 0 || stalled)
    want |= G_IO_OUT;
  if (!c->busy && !c->closing && out->len < MAX_PENDING_OUTPUT && !stalled)
    want |= G_IO_IN;
  if (want == c->watching || !c->fd_tag)
    return;
  g_source_modify_unix_fd (c->source, c->fd_tag, want);
  c->watching = want;
}

static void
conn_close (Conn *c)
{
  g_source_destroy (c->source);
  g_source_unref (c->source);
  close (c->fd);
  g_queue_unlink (&conns, &c->link);
  guint n = GPOINTER_TO_UINT (g_hash_table_lookup (per_client, c->client));
  if (n <= 1)
    g_hash_table_remove (per_client, c->client);
  else
    g_hash_table_insert (per_client, g_strdup (c->client), GUINT_TO_POINTER (n - 1));
  g_autofree char *summary = gm_session_summary (c->session);
  gm_log (NULL, "disconnect from [%s]:%u %s", c->client, c->client_port, summary);
  gm_policy_forget (c->session);
  gm_session_free (c->session);
  g_free (c);
  if (accept_resume)
    {
      /* A descriptor is free again. */
      g_source_remove (accept_resume);
      resume_accepting (NULL);
    }
  if (shutting_down && g_queue_is_empty (&conns))
    g_main_loop_quit (loop);
}

/* After a write: close when asked and everything is sent. */
static void
conn_settle (Conn *c)
{
  if (!conn_flush (c))
    {
      if (!c->busy)
        conn_close (c);
      else
        c->closing = TRUE;
      return;
    }
  if (c->closing && !c->busy && gm_session_output (c->session)->len == 0)
    {
      conn_close (c);
      return;
    }
  conn_update_watch (c);
}

/* Start a new deadline: the session waits for a command, or for data. */
static void
conn_restart_deadline (Conn *c, gint64 now)
{
  c->requests = gm_session_requests (c->session);
  c->reading_data = gm_session_reading_data (c->session);
  guint timeout = c->reading_data ? gm_config.data_timeout : gm_config.command_timeout;
  c->deadline = now + (gint64) timeout * G_USEC_PER_SEC;
}

/* After N bytes were fed to the session. */
static void
conn_advance_deadline (Conn *c, gint64 now, gsize n)
{
  if (gm_session_requests (c->session) != c->requests
      || gm_session_reading_data (c->session) != c->reading_data)
    conn_restart_deadline (c, now);     /* a whole command, or data started or ended */
  else if (c->reading_data)
    {
      gint64 limit = now + (gint64) gm_config.data_timeout * G_USEC_PER_SEC;
      if (gm_config.min_data_rate == 0)
        c->deadline = limit;
      else
        c->deadline = MIN (limit, c->deadline
                           + (gint64) (n * (guint64) G_USEC_PER_SEC / gm_config.min_data_rate));
    }
  /* Otherwise part of a command line: the clock runs on. */
}

typedef struct
{
  Conn *conn;
  char *state_dir;              /* a copy: a reload may replace gm_config's strings */
  GmEnvelope *env;
  const GString *header;
  const GString *body;
  GError *error;
} SpoolJob;

static void
spool_work (gpointer data)
{
  SpoolJob *job = data;
  gm_spool_write (job->state_dir, job->env, job->header->str, job->header->len,
                  job->body->str, job->body->len, &job->error);
}

static void conn_act (Conn *c, GmSessionAction action);

static void
spool_done (gpointer data)
{
  SpoolJob *job = data;
  Conn *c = job->conn;
  c->busy = FALSE;
  if (!job->error && !job->env->quarantine)
    gm_queue_submit (job->env->id);
  GmSessionAction action = gm_session_spooled (c->session, job->error);
  g_clear_error (&job->error);
  g_free (job->state_dir);
  g_free (job);
  c->last_activity = g_get_monotonic_time ();
  conn_restart_deadline (c, c->last_activity);
  conn_act (c, action);
}

/* Suspended rules answered. */
static void
policy_done (gpointer data, const GmVerdict *v)
{
  Conn *c = data;
  c->busy = FALSE;
  c->waiting_rules = FALSE;
  c->last_activity = g_get_monotonic_time ();
  GmSessionAction action = gm_session_policy_done (c->session, v);
  conn_restart_deadline (c, c->last_activity);
  conn_act (c, action);
}

static void
conn_act (Conn *c, GmSessionAction action)
{
  /* Each verdict may lead to the next stage's rules. */
  while (action == GM_SESSION_POLICY)
    {
      GmVerdict v = { 0 };
      if (!gm_policy_run (c->session, &v, policy_done, c))
        {
          /* The rules wait for I/O: read nothing until they answer. */
          c->busy = TRUE;
          c->waiting_rules = TRUE;
          conn_settle (c);
          return;
        }
      action = gm_session_policy_done (c->session, &v);
      gm_verdict_clear (&v);
    }
  if (action == GM_SESSION_SPOOL)
    {
      SpoolJob *job = g_new0 (SpoolJob, 1);
      job->conn = c;
      job->state_dir = g_strdup (gm_config.state_dir);
      gm_session_message (c->session, &job->env, &job->header, &job->body);
      /* The queued rules run once: the queue file records whether they did. */
      if (gm_policy_stages () & (1u << GM_STAGE_QUEUED))
        job->env->queued_rules = GM_RCPT_PENDING;
      c->busy = TRUE;
      gm_workers_push (spool_work, spool_done, job);
    }
  else if (action == GM_SESSION_CLOSE)
    c->closing = TRUE;
  conn_settle (c);
}

/* The peer reset the connection (or hung up) while its message is being
 * spooled or its rules wait. poll() reports that whatever events are asked
 * for, so the descriptor leaves the poll set instead of waking the loop
 * again and again; the work in progress finishes, then the connection is
 * closed (its reply cannot be sent). */
static void
conn_peer_gone (Conn *c)
{
  c->closing = TRUE;
  g_source_remove_unix_fd (c->source, c->fd_tag);
  c->fd_tag = NULL;
  c->watching = 0;
}

static void
on_conn_io (Conn *c, GIOCondition cond)
{
  static char buf[64 * 1024];
  if ((cond & (G_IO_HUP | G_IO_ERR)) && c->busy)
    {
      conn_peer_gone (c);
      return;
    }
  if ((cond & G_IO_IN) && !c->busy && !c->closing)
    {
      ssize_t n = recv (c->fd, buf, sizeof buf, 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
        {
          conn_close (c);
          return;
        }
      if (n > 0)
        {
          c->last_activity = g_get_monotonic_time ();
          GmSessionAction action = gm_session_feed (c->session, buf, n);
          conn_advance_deadline (c, c->last_activity, n);
          conn_act (c, action);
          return;
        }
    }
  if ((cond & G_IO_OUT) && !c->busy && !c->closing && gm_session_stalled (c->session)
      && conn_flush (c) && gm_session_output (c->session)->len < MAX_PENDING_OUTPUT)
    {
      /* The replies drained: read the commands still buffered. */
      GmSessionAction action = gm_session_feed (c->session, NULL, 0);
      conn_advance_deadline (c, g_get_monotonic_time (), 0);
      conn_act (c, action);
      return;
    }
  if (cond & (G_IO_OUT | G_IO_HUP | G_IO_ERR))
    conn_settle (c);
}

static void
refuse (int fd, const char *client)
{
  GString *out = g_string_new (NULL);
  g_autofree char *text = g_strdup_printf ("%s Error: too many connections", gm_config.hostname);
  gm_reply (out, GM_REPLY_TOO_MANY_CONNECTIONS, text);
  ssize_t ignored = send (fd, out->str, out->len, MSG_NOSIGNAL | MSG_DONTWAIT);
  (void) ignored;
  g_string_free (out, TRUE);
  close (fd);
  gm_log (NULL, "refused connection from [%s]: too many connections", client);
}

static gboolean
on_accept (gint lfd, GIOCondition cond, gpointer data)
{
  for (int i = 0; i < 64; i++)
    {
      struct sockaddr_storage peer, local;
      socklen_t plen = sizeof peer, llen = sizeof local;
      int fd = accept4 (lfd, (struct sockaddr *) &peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0)
        {
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
            pause_accepting (errno);
          else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
            gm_log (NULL, "accept: %s", g_strerror (errno));
          break;
        }
      char client[INET6_ADDRSTRLEN], local_text[INET6_ADDRSTRLEN];
      guint16 client_port, local_port;
      sockaddr_text (&peer, client, &client_port);
      getsockname (fd, (struct sockaddr *) &local, &llen);
      sockaddr_text (&local, local_text, &local_port);

      guint from_client = GPOINTER_TO_UINT (g_hash_table_lookup (per_client, client));
      if (conns.length >= gm_config.max_connections
          || from_client >= gm_config.max_connections_per_client)
        {
          refuse (fd, client);
          continue;
        }
      g_hash_table_insert (per_client, g_strdup (client), GUINT_TO_POINTER (from_client + 1));

      Conn *c = g_new0 (Conn, 1);
      c->fd = fd;
      c->link.data = c;
      memcpy (c->client, client, sizeof client);
      c->client_port = client_port;
      c->connected = c->last_activity = g_get_monotonic_time ();
      GmConnInfo info = { client, client_port, local_text, local_port };
      c->session = gm_session_new (&info);
      conn_restart_deadline (c, c->connected);
      c->source = g_source_new (&conn_source_funcs, sizeof (ConnSource));
      ((ConnSource *) c->source)->conn = c;
      c->fd_tag = g_source_add_unix_fd (c->source, fd, 0);
      no_self_wakeups (c->source);
      g_source_attach (c->source, NULL);
      g_queue_push_tail_link (&conns, &c->link);
      gm_log (NULL, "connect from [%s]:%u to [%s]:%u", client, client_port, local_text, local_port);
      gm_session_set_policy (c->session, gm_policy_session_start (c->session));
      conn_act (c, gm_session_greet (c->session));
    }
  return G_SOURCE_CONTINUE;
}

/* ---- Timers and shutdown --------------------------------------------- */

static void
conn_abort (Conn *c, guint reply_kind)
{
  gm_session_abort (c->session, reply_kind);
  c->closing = TRUE;
  conn_settle (c);
}

static gboolean
on_tick (gpointer data)
{
  gint64 now = g_get_monotonic_time ();
  guint waiting = 0;
  for (GList *l = conns.head; l;)
    {
      Conn *c = l->data;
      l = l->next;
      waiting += c->waiting_rules;
      if (c->busy)
        continue;
      if (c->closing)
        {
          /* A client that reads nothing cannot keep us forever. */
          if (now - c->last_activity > (gint64) gm_config.command_timeout * G_USEC_PER_SEC)
            conn_close (c);
          continue;
        }
      if (shutting_down && (!gm_session_in_transaction (c->session) || now >= shutdown_deadline))
        conn_abort (c, GM_REPLY_SHUTDOWN);
      else if (now >= c->deadline)
        {
          gboolean in_data = gm_session_reading_data (c->session);
          gm_log (NULL, "timeout after %us from [%s]:%u while reading %s",
                  in_data ? gm_config.data_timeout : gm_config.command_timeout, c->client,
                  c->client_port, in_data ? "message data" : "a command");
          conn_abort (c, GM_REPLY_TIMEOUT);
        }
    }
  if (shutting_down && g_queue_is_empty (&conns))
    g_main_loop_quit (loop);
  else if (shutting_down && now >= shutdown_deadline && waiting == conns.length)
    {
      /* Rules that wait (a long pause, a slow lookup) cannot hold the
       * shutdown past its time: their clients have no 250 yet, so nothing
       * they sent is lost. */
      gm_log (NULL, "shutting down: %u session(s) still waiting for their rules, stopping anyway",
              waiting);
      g_main_loop_quit (loop);
    }
  return G_SOURCE_CONTINUE;
}

static gboolean
on_signal (gpointer data)
{
  if (shutting_down)
    return G_SOURCE_CONTINUE;
  gm_log (NULL, "shutting down: no new connections, %u session(s) finishing within %us",
          conns.length, gm_config.shutdown_timeout);
  shutting_down = TRUE;
  shutdown_deadline = g_get_monotonic_time () + (gint64) gm_config.shutdown_timeout * G_USEC_PER_SEC;
  close_listeners ();
  gm_queue_stop ();
  on_tick (NULL);
  return G_SOURCE_CONTINUE;
}

static gboolean
on_hangup (gpointer data)
{
  /* Logged by the reload, success or failure; the server goes on either way. */
  gm_control_reload ("SIGHUP", NULL, NULL);
  return G_SOURCE_CONTINUE;
}

/* For the REPL's (sessions). */
void
gm_server_foreach_session (GmServerSessionFunc func, gpointer data)
{
  gint64 now = g_get_monotonic_time ();
  for (GList *l = conns.head; l; l = l->next)
    {
      Conn *c = l->data;
      GmServerSessionInfo info = {
        c->session,
        c->closing ? "closing" : c->busy ? "busy"
        : gm_session_reading_data (c->session) ? "data"
        : gm_session_in_transaction (c->session) ? "transaction" : "idle",
        now - c->connected, now - c->last_activity,
      };
      func (&info, data);
    }
}

int
gm_server_run (void)
{
  loop = g_main_loop_new (NULL, FALSE);
  g_unix_signal_add (SIGTERM, on_signal, NULL);
  g_unix_signal_add (SIGINT, on_signal, NULL);
  g_unix_signal_add (SIGHUP, on_hangup, NULL);
  g_timeout_add_seconds (1, on_tick, NULL);
  g_main_loop_run (loop);
  gm_workers_shutdown ();
  gm_log (NULL, "stopped");
  return 0;
}
