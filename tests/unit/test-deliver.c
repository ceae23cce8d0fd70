/* test-deliver.c — local delivery: Maildir files and names, no duplicates on
 * repeated delivery, mboxrd quoting byte for byte, locking, and failures that
 * leave the destination unchanged. */
#include "config.h"
#include "deliver-local.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <utime.h>
#include <glib/gstdio.h>

#define ARRIVAL 1795608000      /* Wed Nov 25 12:00:00 2026 UTC */

static const GmDeliveryInfo alice_to_bob = {
  .queue_id = "0661196F5374FA",
  .rcpt_index = 0,
  .arrival = ARRIVAL,
  .sender = "alice@client.example",
  .recipient = "bob@mx.example",
  .hostname = "mx.example",
};

static const char message[] = "Received: by mx.example\nSubject: hi\n\nHello Bob.\n";

/* ---- Helpers ---- */

static void
remove_tree (const char *path)
{
  GDir *dir = g_dir_open (path, 0, NULL);
  if (dir)
    {
      const char *name;
      while ((name = g_dir_read_name (dir)))
        {
          g_autofree char *child = g_build_filename (path, name, NULL);
          remove_tree (child);
        }
      g_dir_close (dir);
    }
  g_remove (path);
}

static char *
make_scratch (void)
{
  g_autoptr (GError) error = NULL;
  char *dir = g_dir_make_tmp ("test-deliver-XXXXXX", &error);
  g_assert_no_error (error);
  return dir;
}

/* The names in DIR, sorted. */
static GPtrArray *
list_dir (const char *dir)
{
  GPtrArray *names = g_ptr_array_new_with_free_func (g_free);
  GDir *d = g_dir_open (dir, 0, NULL);
  g_assert_nonnull (d);
  const char *name;
  while ((name = g_dir_read_name (d)))
    g_ptr_array_add (names, g_strdup (name));
  g_dir_close (d);
  g_ptr_array_sort (names, (GCompareFunc) g_strcmp0);
  return names;
}

static char *
read_file (const char *path)
{
  g_autoptr (GError) error = NULL;
  char *contents = NULL;
  g_file_get_contents (path, &contents, NULL, &error);
  g_assert_no_error (error);
  return contents;
}

static void
assert_delivered (GmDeliveryResult result, const char *detail)
{
  if (result != GM_DELIVERY_OK)
    g_error ("delivery failed (%d): %s", result, detail ? detail : "(no detail)");
  g_assert_null (detail);
}

/* Make writes past LIMIT bytes fail with EFBIG, which even root cannot
 * bypass: a cheap stand-in for a full disk. */
static struct rlimit
limit_file_size (rlim_t limit)
{
  struct rlimit old, tight;
  g_assert_cmpint (getrlimit (RLIMIT_FSIZE, &old), ==, 0);
  tight = old;
  tight.rlim_cur = limit;
  signal (SIGXFSZ, SIG_IGN);
  g_assert_cmpint (setrlimit (RLIMIT_FSIZE, &tight), ==, 0);
  return old;
}

static void
restore_file_size (struct rlimit old)
{
  g_assert_cmpint (setrlimit (RLIMIT_FSIZE, &old), ==, 0);
}

/* ---- Maildir ---- */

static void
test_maildir_content (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *maildir = g_build_filename (scratch, "home", "bob", "Maildir", NULL);
  g_autofree char *detail = NULL;
  assert_delivered (gm_deliver_maildir (maildir, &alice_to_bob, message, strlen (message), &detail),
                    detail);

  g_autofree char *new_dir = g_build_filename (maildir, "new", NULL);
  g_autofree char *tmp_dir = g_build_filename (maildir, "tmp", NULL);
  g_autofree char *cur_dir = g_build_filename (maildir, "cur", NULL);
  g_autoptr (GPtrArray) delivered = list_dir (new_dir);
  g_assert_cmpuint (delivered->len, ==, 1);
  g_assert_cmpstr (g_ptr_array_index (delivered, 0), ==,
                   "1795608000.0661196F5374FA_R0.mx.example");
  g_autofree char *path = g_build_filename (new_dir, g_ptr_array_index (delivered, 0), NULL);
  g_autofree char *contents = read_file (path);
  g_assert_cmpstr (contents, ==, "Return-Path: <alice@client.example>\n"
                                 "Delivered-To: bob@mx.example\n"
                                 "Received: by mx.example\nSubject: hi\n\nHello Bob.\n");
  g_autoptr (GPtrArray) in_tmp = list_dir (tmp_dir);
  g_assert_cmpuint (in_tmp->len, ==, 0);
  g_autoptr (GPtrArray) in_cur = list_dir (cur_dir);
  g_assert_cmpuint (in_cur->len, ==, 0);

  const char *const dirs[] = { maildir, new_dir, tmp_dir, cur_dir };
  for (gsize i = 0; i < G_N_ELEMENTS (dirs); i++)
    {
      GStatBuf st;
      g_assert_cmpint (g_stat (dirs[i], &st), ==, 0);
      g_assert_cmpint (st.st_mode & 07777, ==, 0700);
    }
  remove_tree (scratch);
}

static void
test_maildir_no_duplicates (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *new_dir = g_build_filename (scratch, "new", NULL);
  g_autofree char *cur_dir = g_build_filename (scratch, "cur", NULL);
  GmDeliveryInfo info = alice_to_bob;
  info.arrival = time (NULL);
  g_autofree char *detail = NULL;

  assert_delivered (gm_deliver_maildir (scratch, &info, message, strlen (message), &detail), detail);
  assert_delivered (gm_deliver_maildir (scratch, &info, message, strlen (message), &detail), detail);
  g_autoptr (GPtrArray) once = list_dir (new_dir);
  g_assert_cmpuint (once->len, ==, 1);

  /* A reader moved it to cur/ and flagged it seen: still no second copy. */
  g_autofree char *from = g_build_filename (new_dir, g_ptr_array_index (once, 0), NULL);
  g_autofree char *seen_name = g_strconcat (g_ptr_array_index (once, 0), ":2,S", NULL);
  g_autofree char *to = g_build_filename (cur_dir, seen_name, NULL);
  g_assert_cmpint (g_rename (from, to), ==, 0);
  assert_delivered (gm_deliver_maildir (scratch, &info, message, strlen (message), &detail), detail);
  g_autoptr (GPtrArray) after_read = list_dir (new_dir);
  g_assert_cmpuint (after_read->len, ==, 0);

  /* Another recipient of the same message is another file. */
  info.rcpt_index = 1;
  assert_delivered (gm_deliver_maildir (scratch, &info, message, strlen (message), &detail), detail);
  g_autoptr (GPtrArray) second = list_dir (new_dir);
  g_assert_cmpuint (second->len, ==, 1);
  g_assert_true (strstr (g_ptr_array_index (second, 0), "_R1.") != NULL);
  remove_tree (scratch);
}

static void
test_maildir_hostname_encoding (void)
{
  g_autofree char *scratch = make_scratch ();
  GmDeliveryInfo info = alice_to_bob;
  info.hostname = "odd/host:name";
  g_autofree char *detail = NULL;
  assert_delivered (gm_deliver_maildir (scratch, &info, message, strlen (message), &detail), detail);
  g_autofree char *new_dir = g_build_filename (scratch, "new", NULL);
  g_autoptr (GPtrArray) names = list_dir (new_dir);
  g_assert_cmpuint (names->len, ==, 1);
  g_assert_cmpstr (g_ptr_array_index (names, 0), ==,
                   "1795608000.0661196F5374FA_R0.odd\\057host\\072name");
  remove_tree (scratch);
}

static void
test_maildir_stale_tmp (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *tmp_dir = g_build_filename (scratch, "tmp", NULL);
  g_assert_cmpint (g_mkdir (tmp_dir, 0700), ==, 0);
  g_autofree char *stale = g_build_filename (tmp_dir, "1795608000.0661196F5374FA_R0.mx.example",
                                             NULL);
  g_assert_true (g_file_set_contents (stale, "half a mess", -1, NULL));
  g_autofree char *detail = NULL;
  assert_delivered (gm_deliver_maildir (scratch, &alice_to_bob, message, strlen (message), &detail),
                    detail);
  g_autofree char *delivered = g_build_filename (scratch, "new",
                                                 "1795608000.0661196F5374FA_R0.mx.example", NULL);
  g_autofree char *contents = read_file (delivered);
  g_assert_true (g_str_has_suffix (contents, message));
  g_autoptr (GPtrArray) in_tmp = list_dir (tmp_dir);
  g_assert_cmpuint (in_tmp->len, ==, 0);
  remove_tree (scratch);
}

/* A link-and-unlink move cut between the two leaves the tmp/ name beside the
 * delivered file: the next attempt finds the file in new/ and removes it. */
static void
test_maildir_tmp_beside_delivered (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *detail = NULL;
  assert_delivered (gm_deliver_maildir (scratch, &alice_to_bob, message, strlen (message), &detail),
                    detail);
  g_autofree char *tmp_dir = g_build_filename (scratch, "tmp", NULL);
  g_autofree char *leftover = g_build_filename (tmp_dir, "1795608000.0661196F5374FA_R0.mx.example",
                                                NULL);
  g_assert_true (g_file_set_contents (leftover, "the same message", -1, NULL));
  assert_delivered (gm_deliver_maildir (scratch, &alice_to_bob, message, strlen (message), &detail),
                    detail);
  g_autoptr (GPtrArray) in_tmp = list_dir (tmp_dir);
  g_assert_cmpuint (in_tmp->len, ==, 0);
  g_autofree char *new_dir = g_build_filename (scratch, "new", NULL);
  g_autoptr (GPtrArray) in_new = list_dir (new_dir);
  g_assert_cmpuint (in_new->len, ==, 1);
  remove_tree (scratch);
}

static void
test_maildir_wrong_type (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *file = g_build_filename (scratch, "Maildir", NULL);
  g_assert_true (g_file_set_contents (file, "not a directory", -1, NULL));
  g_autofree char *detail = NULL;
  g_assert_cmpint (gm_deliver_maildir (file, &alice_to_bob, message, strlen (message), &detail), ==,
                   GM_DELIVERY_PERMFAIL);
  g_assert_nonnull (detail);
  g_assert_true (g_str_has_prefix (detail, "maildir "));
  g_assert_true (strstr (detail, file) != NULL);
  g_autofree char *contents = read_file (file);
  g_assert_cmpstr (contents, ==, "not a directory");
  remove_tree (scratch);
}

static void
test_maildir_write_failure (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *detail = NULL;
  /* Create the directories first, so that only the message write fails. */
  assert_delivered (gm_deliver_maildir (scratch, &alice_to_bob, "", 0, &detail), detail);
  g_autofree char *new_dir = g_build_filename (scratch, "new", NULL);
  g_autofree char *tmp_dir = g_build_filename (scratch, "tmp", NULL);
  g_autofree char *first = g_build_filename (new_dir, "1795608000.0661196F5374FA_R0.mx.example",
                                             NULL);
  g_assert_cmpint (g_unlink (first), ==, 0);

  struct rlimit old = limit_file_size (40);
  GmDeliveryResult result = gm_deliver_maildir (scratch, &alice_to_bob, message, strlen (message),
                                                &detail);
  restore_file_size (old);
  g_assert_cmpint (result, ==, GM_DELIVERY_TEMPFAIL);
  g_assert_nonnull (detail);
  g_assert_true (g_str_has_prefix (detail, "maildir "));
  g_autoptr (GPtrArray) in_new = list_dir (new_dir);
  g_autoptr (GPtrArray) in_tmp = list_dir (tmp_dir);
  g_assert_cmpuint (in_new->len, ==, 0);
  g_assert_cmpuint (in_tmp->len, ==, 0);
  remove_tree (scratch);
}

static void
test_maildir_permission_denied (void)
{
  if (geteuid () == 0)
    {
      g_test_skip ("root ignores directory permissions");
      return;
    }
  g_autofree char *scratch = make_scratch ();
  g_autofree char *detail = NULL;
  g_assert_cmpint (g_chmod (scratch, 0500), ==, 0);
  g_autofree char *maildir = g_build_filename (scratch, "Maildir", NULL);
  g_assert_cmpint (gm_deliver_maildir (maildir, &alice_to_bob, message, strlen (message), &detail),
                   ==, GM_DELIVERY_TEMPFAIL);
  g_assert_true (strstr (detail, "Permission denied") != NULL);
  g_chmod (scratch, 0700);
  remove_tree (scratch);
}

/* ---- mbox ---- */

static const char tricky[] = "Subject: quoting\n"
                             "\n"
                             "From the start of a line\n"
                             ">From quoted once\n"
                             ">>From quoted twice\n"
                             "From:not a separator\n"
                             " From indented\n"
                             "Fromage\n"
                             "From ";

static const char bounce[] = "Subject: bounce\n\nFrom here on, nothing.\n";

static const char expected_mbox[] =
  "From alice@client.example Wed Nov 25 12:00:00 2026\n"
  "Return-Path: <alice@client.example>\n"
  "Delivered-To: bob@mx.example\n"
  "Subject: quoting\n"
  "\n"
  ">From the start of a line\n"
  ">>From quoted once\n"
  ">>>From quoted twice\n"
  "From:not a separator\n"
  " From indented\n"
  "Fromage\n"
  ">From \n"
  "\n"
  "From MAILER-DAEMON Thu Nov  5 09:07:03 2026\n"
  "Return-Path: <>\n"
  "Delivered-To: bob@mx.example\n"
  "Subject: bounce\n"
  "\n"
  ">From here on, nothing.\n"
  "\n";

static GmDeliveryInfo
null_sender_info (void)
{
  GmDeliveryInfo info = alice_to_bob;
  info.sender = "";
  info.arrival = ARRIVAL - 20 * 86400 - 2 * 3600 - 52 * 60 - 57;   /* Thu Nov  5 09:07:03 */
  return info;
}

static void
test_mbox_content (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *mbox = g_build_filename (scratch, "var", "mail", "bob", NULL);
  g_autofree char *detail = NULL;
  assert_delivered (gm_deliver_mbox (mbox, &alice_to_bob, tricky, strlen (tricky), &detail), detail);
  GmDeliveryInfo bounce_info = null_sender_info ();
  assert_delivered (gm_deliver_mbox (mbox, &bounce_info, bounce, strlen (bounce), &detail), detail);
  g_autofree char *contents = read_file (mbox);
  g_assert_cmpstr (contents, ==, expected_mbox);
  g_autofree char *lock = g_strconcat (mbox, ".lock", NULL);
  g_assert_false (g_file_test (lock, G_FILE_TEST_EXISTS));
  GStatBuf st;
  g_assert_cmpint (g_stat (mbox, &st), ==, 0);
  g_assert_cmpint (st.st_mode & 0777, ==, 0600);
  remove_tree (scratch);
}

static void
test_mbox_is_directory (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *mbox = g_build_filename (scratch, "bob", NULL);
  g_assert_cmpint (g_mkdir (mbox, 0700), ==, 0);
  g_autofree char *detail = NULL;
  g_assert_cmpint (gm_deliver_mbox (mbox, &alice_to_bob, message, strlen (message), &detail), ==,
                   GM_DELIVERY_PERMFAIL);
  g_assert_true (g_str_has_prefix (detail, "mbox "));
  g_autoptr (GPtrArray) inside = list_dir (mbox);
  g_assert_cmpuint (inside->len, ==, 0);
  g_autoptr (GPtrArray) beside = list_dir (scratch);
  g_assert_cmpuint (beside->len, ==, 1);      /* no lock left behind */
  remove_tree (scratch);
}

/* A write that fails half-way is cut back to the previous size. */
static void
test_mbox_rollback (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *mbox = g_build_filename (scratch, "bob", NULL);
  g_autofree char *detail = NULL;
  assert_delivered (gm_deliver_mbox (mbox, &alice_to_bob, tricky, strlen (tricky), &detail), detail);
  g_autofree char *before = read_file (mbox);

  g_autofree char *big = g_strnfill (4000, 'x');
  struct rlimit old = limit_file_size (strlen (before) + 100);
  GmDeliveryResult result = gm_deliver_mbox (mbox, &alice_to_bob, big, strlen (big), &detail);
  restore_file_size (old);
  g_assert_cmpint (result, ==, GM_DELIVERY_TEMPFAIL);
  g_assert_true (g_str_has_prefix (detail, "mbox "));
  g_autofree char *after = read_file (mbox);
  g_assert_cmpstr (after, ==, before);
  g_autoptr (GPtrArray) beside = list_dir (scratch);
  g_assert_cmpuint (beside->len, ==, 1);
  remove_tree (scratch);
}

static void
test_mbox_permission_denied (void)
{
  if (geteuid () == 0)
    {
      g_test_skip ("root ignores directory permissions");
      return;
    }
  g_autofree char *scratch = make_scratch ();
  g_autofree char *mbox = g_build_filename (scratch, "bob", NULL);
  g_autofree char *detail = NULL;
  assert_delivered (gm_deliver_mbox (mbox, &alice_to_bob, tricky, strlen (tricky), &detail), detail);
  g_autofree char *before = read_file (mbox);
  g_assert_cmpint (g_chmod (mbox, 0400), ==, 0);
  g_assert_cmpint (gm_deliver_mbox (mbox, &alice_to_bob, message, strlen (message), &detail), ==,
                   GM_DELIVERY_TEMPFAIL);
  g_assert_true (strstr (detail, "Permission denied") != NULL);
  g_autofree char *after = read_file (mbox);
  g_assert_cmpstr (after, ==, before);
  g_chmod (mbox, 0600);
  remove_tree (scratch);
}

static void
test_mbox_stale_lock (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *mbox = g_build_filename (scratch, "bob", NULL);
  g_autofree char *lock = g_strconcat (mbox, ".lock", NULL);
  g_assert_true (g_file_set_contents (lock, "12345\n", -1, NULL));
  struct utimbuf old = { .actime = time (NULL) - 600, .modtime = time (NULL) - 600 };
  g_assert_cmpint (utime (lock, &old), ==, 0);
  g_autofree char *detail = NULL;
  assert_delivered (gm_deliver_mbox (mbox, &alice_to_bob, message, strlen (message), &detail),
                    detail);
  g_assert_false (g_file_test (lock, G_FILE_TEST_EXISTS));
  remove_tree (scratch);
}

/* The pid of a process that has exited. */
static pid_t
dead_pid (void)
{
  pid_t child = fork ();
  g_assert_cmpint (child, >=, 0);
  if (child == 0)
    _exit (0);
  g_assert_cmpint (waitpid (child, NULL, 0), ==, child);
  return child;
}

/* Deliver MESSAGE to MBOX with a fresh dot-lock holding OWNER in the way:
 * the lock must be judged stale at once (well before the 10 s timeout). */
static void
assert_lock_broken_at_once (const char *owner)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *mbox = g_build_filename (scratch, "bob", NULL);
  g_autofree char *lock = g_strconcat (mbox, ".lock", NULL);
  g_assert_true (g_file_set_contents (lock, owner, -1, NULL));
  g_autofree char *detail = NULL;
  gint64 t0 = g_get_monotonic_time ();
  assert_delivered (gm_deliver_mbox (mbox, &alice_to_bob, message, strlen (message), &detail),
                    detail);
  g_assert_cmpint (g_get_monotonic_time () - t0, <, 2 * G_USEC_PER_SEC);
  g_assert_false (g_file_test (lock, G_FILE_TEST_EXISTS));
  g_autofree char *contents = read_file (mbox);
  g_assert_true (g_str_has_suffix (contents, "Hello Bob.\n\n"));
  remove_tree (scratch);
}

/* A dot-lock left by a process that died (a crash during delivery) is stale
 * at once, in our "PID:HOST" form and in liblockfile's "PID". */
static void
test_mbox_dead_owner_lock (void)
{
  g_autofree char *ours = g_strdup_printf ("%d:%s\n", (int) dead_pid (), g_get_host_name ());
  assert_lock_broken_at_once (ours);
  g_autofree char *bare = g_strdup_printf ("%d\n", (int) dead_pid ());
  assert_lock_broken_at_once (bare);
}

/* Our own pid, but none of our threads holds it: left by an earlier process
 * that had the same pid (a restarted server in a container often does). */
static void
test_mbox_own_pid_leftover_lock (void)
{
  g_autofree char *owner = g_strdup_printf ("%d:%s\n", (int) getpid (), g_get_host_name ());
  assert_lock_broken_at_once (owner);
}

/* Another host's lock: its pid means nothing here, only its age counts.
 * Takes the lock timeout (10 s): run with -m slow. */
static void
test_mbox_other_host_lock (void)
{
  if (!g_test_slow ())
    {
      g_test_skip ("waits for the lock timeout: run with -m slow");
      return;
    }
  g_autofree char *scratch = make_scratch ();
  g_autofree char *mbox = g_build_filename (scratch, "bob", NULL);
  g_autofree char *lock = g_strconcat (mbox, ".lock", NULL);
  g_autofree char *owner = g_strdup_printf ("%d:elsewhere.invalid\n", (int) dead_pid ());
  g_assert_true (g_file_set_contents (lock, owner, -1, NULL));
  g_autofree char *detail = NULL;
  g_assert_cmpint (gm_deliver_mbox (mbox, &alice_to_bob, message, strlen (message), &detail), ==,
                   GM_DELIVERY_TEMPFAIL);
  g_assert_true (strstr (detail, "still locked") != NULL);
  g_assert_true (g_file_test (lock, G_FILE_TEST_EXISTS));
  remove_tree (scratch);
}

/* Takes the lock timeout (10 s): run with -m slow. */
static void
test_mbox_busy_lock (void)
{
  if (!g_test_slow ())
    {
      g_test_skip ("waits for the lock timeout: run with -m slow");
      return;
    }
  g_autofree char *scratch = make_scratch ();
  g_autofree char *mbox = g_build_filename (scratch, "bob", NULL);
  g_autofree char *lock = g_strconcat (mbox, ".lock", NULL);
  /* A live process's lock (our parent's), fresh: delivery waits, then gives up. */
  g_autofree char *owner = g_strdup_printf ("%d\n", (int) getppid ());
  g_assert_true (g_file_set_contents (lock, owner, -1, NULL));
  g_autofree char *detail = NULL;
  g_assert_cmpint (gm_deliver_mbox (mbox, &alice_to_bob, message, strlen (message), &detail), ==,
                   GM_DELIVERY_TEMPFAIL);
  g_assert_true (strstr (detail, "still locked") != NULL);
  g_assert_true (g_file_test (lock, G_FILE_TEST_EXISTS));
  g_assert_false (g_file_test (mbox, G_FILE_TEST_EXISTS));
  remove_tree (scratch);
}

/* Threads of one process: the dot-lock keeps them apart (fcntl locks do not). */
#define MBOX_THREADS 8
#define MBOX_MESSAGES 15

static gpointer
deliver_many (gpointer data)
{
  const char *mbox = data;
  for (int i = 0; i < MBOX_MESSAGES; i++)
    {
      g_autofree char *detail = NULL;
      g_autofree char *body = g_strdup_printf ("Subject: %d\n\n%s", i, tricky);
      if (gm_deliver_mbox (mbox, &alice_to_bob, body, strlen (body), &detail) != GM_DELIVERY_OK)
        g_error ("concurrent delivery: %s", detail);
    }
  return NULL;
}

/* A quoted local part with spaces must not split the "From " separator. */
static void
test_mbox_sender_with_spaces (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *mbox = g_build_filename (scratch, "bob", NULL);
  GmDeliveryInfo info = alice_to_bob;
  info.sender = "\"john doe\"@client.example";
  g_autofree char *detail = NULL;
  g_assert_cmpint (gm_deliver_mbox (mbox, &info, bounce, strlen (bounce), &detail), ==,
                   GM_DELIVERY_OK);
  g_autofree char *content = read_file (mbox);
  g_assert_true (g_str_has_prefix (content, "From \"john_doe\"@client.example Wed Nov 25 12:00:00 2026\n"
                                   "Return-Path: <\"john doe\"@client.example>\n"));
  remove_tree (scratch);
}

static void
test_mbox_concurrent (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *mbox = g_build_filename (scratch, "bob", NULL);
  GThread *threads[MBOX_THREADS];
  for (int t = 0; t < MBOX_THREADS; t++)
    threads[t] = g_thread_new ("mbox", deliver_many, mbox);
  for (int t = 0; t < MBOX_THREADS; t++)
    g_thread_join (threads[t]);

  /* Every entry whole: after each separator, exactly one quoted message. */
  g_autofree char *contents = read_file (mbox);
  const char *quoted_start = strstr (expected_mbox, "Subject: quoting");
  const char *quoted_end = strstr (expected_mbox, "From MAILER-DAEMON");
  g_autofree char *quoted = g_strndup (quoted_start, quoted_end - quoted_start);
  g_auto (GStrv) entries = g_strsplit (contents, "From alice@client.example Wed Nov 25 12:00:00 2026\n",
                                       -1);
  g_assert_cmpuint (g_strv_length (entries), ==, MBOX_THREADS * MBOX_MESSAGES + 1);
  g_assert_cmpstr (entries[0], ==, "");
  guint per_subject[MBOX_MESSAGES] = { 0 };
  for (guint i = 1; entries[i]; i++)
    {
      const char *subject = strstr (entries[i], "Subject: ");
      g_assert_nonnull (subject);
      guint n = (guint) g_ascii_strtoull (subject + 9, NULL, 10);
      g_assert_cmpuint (n, <, MBOX_MESSAGES);
      per_subject[n]++;
      g_autofree char *expected = g_strdup_printf ("Return-Path: <alice@client.example>\n"
                                                   "Delivered-To: bob@mx.example\n"
                                                   "Subject: %u\n\n%s", n, quoted);
      g_assert_cmpstr (entries[i], ==, expected);
    }
  for (guint n = 0; n < MBOX_MESSAGES; n++)
    g_assert_cmpuint (per_subject[n], ==, MBOX_THREADS);
  remove_tree (scratch);
}

/* ---- mbox journal: what a crash left at the recorded offset ---- */

typedef struct
{
  gint64 recorded;              /* the last offset recorded, -1 for none */
  guint calls;
  gboolean fail;
} TestJournal;

static gboolean
test_record (gpointer data, gint64 offset, char **detail)
{
  TestJournal *j = data;
  j->calls++;
  if (j->fail)
    {
      *detail = g_strdup ("record: injected failure");
      return FALSE;
    }
  j->recorded = offset;
  return TRUE;
}

/* Its Received: header names the queue id, as the server's do. */
static const char journaled[] = "Received: by mx.example id 0661196F5374FA; Wed, 25 Nov 2026\n"
                                "Subject: journal\n\nFrom a line\n";

/* Deliver JOURNALED into MBOX with a journal saying an earlier attempt began
 * at PREVIOUS (-1: none). */
static GmDeliveryResult
deliver_journaled (const char *mbox, TestJournal *j, gint64 previous, char **detail)
{
  GmMboxJournal journal = { previous, test_record, j };
  GmDeliveryInfo info = alice_to_bob;
  info.journal = &journal;
  g_clear_pointer (detail, g_free);
  return gm_deliver_mbox (mbox, &info, journaled, strlen (journaled), detail);
}

/* The entry a delivery of JOURNALED appends. */
static GString *
journaled_entry (const char *scratch)
{
  g_autofree char *mbox = g_build_filename (scratch, "reference", NULL);
  g_autofree char *detail = NULL;
  assert_delivered (gm_deliver_mbox (mbox, &alice_to_bob, journaled, strlen (journaled), &detail),
                    detail);
  g_autofree char *contents = read_file (mbox);
  g_remove (mbox);
  return g_string_new (contents);
}

/* An mbox holding the tricky message: returns its path, its size in *SIZE. */
static char *
mbox_with_one_entry (const char *scratch, gint64 *size)
{
  char *mbox = g_build_filename (scratch, "bob", NULL);
  g_autofree char *detail = NULL;
  assert_delivered (gm_deliver_mbox (mbox, &alice_to_bob, tricky, strlen (tricky), &detail), detail);
  GStatBuf st;
  g_assert_cmpint (g_stat (mbox, &st), ==, 0);
  *size = st.st_size;
  return mbox;
}

static void
append_bytes (const char *path, const char *data, gsize len)
{
  FILE *f = fopen (path, "ab");
  g_assert_nonnull (f);
  g_assert_cmpuint (fwrite (data, 1, len, f), ==, len);
  g_assert_cmpint (fclose (f), ==, 0);
}

/* The offset is recorded before the append, where the entry then starts. */
static void
test_mbox_journal_records_offset (void)
{
  g_autofree char *scratch = make_scratch ();
  gint64 size;
  g_autofree char *mbox = mbox_with_one_entry (scratch, &size);
  g_autofree char *before = read_file (mbox);
  g_autoptr (GString) entry = journaled_entry (scratch);
  TestJournal j = { -1, 0, FALSE };
  g_autofree char *detail = NULL;
  assert_delivered (deliver_journaled (mbox, &j, -1, &detail), detail);
  g_assert_cmpuint (j.calls, ==, 1);
  g_assert_cmpint (j.recorded, ==, size);
  g_autofree char *after = read_file (mbox);
  g_autofree char *expected = g_strconcat (before, entry->str, NULL);
  g_assert_cmpstr (after, ==, expected);
  remove_tree (scratch);
}

/* A crash after the append, before the recipient's mark: the next attempt
 * finds the whole entry at the recorded offset (later mail after it) and
 * appends nothing. */
static void
test_mbox_journal_already_done (void)
{
  g_autofree char *scratch = make_scratch ();
  gint64 size;
  g_autofree char *mbox = mbox_with_one_entry (scratch, &size);
  TestJournal j = { -1, 0, FALSE };
  g_autofree char *detail = NULL;
  assert_delivered (deliver_journaled (mbox, &j, -1, &detail), detail);
  GmDeliveryInfo bounce_info = null_sender_info ();
  assert_delivered (gm_deliver_mbox (mbox, &bounce_info, bounce, strlen (bounce), &detail), detail);
  g_autofree char *before = read_file (mbox);

  TestJournal again = { -1, 0, FALSE };
  assert_delivered (deliver_journaled (mbox, &again, size, &detail), detail);
  g_assert_cmpuint (again.calls, ==, 0);
  g_autofree char *after = read_file (mbox);
  g_assert_cmpstr (after, ==, before);
  remove_tree (scratch);
}

/* A crash in the middle of the append: the partial entry at the end is cut
 * off and the whole entry appended in its place, wherever the cut was. */
static void
test_mbox_journal_partial (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autoptr (GString) entry = journaled_entry (scratch);
  const gsize cuts[] = { 1, 5, entry->len / 2, entry->len - 1 };
  for (gsize c = 0; c < G_N_ELEMENTS (cuts); c++)
    {
      gint64 size;
      g_autofree char *mbox = mbox_with_one_entry (scratch, &size);
      g_autofree char *before = read_file (mbox);
      append_bytes (mbox, entry->str, cuts[c]);
      TestJournal j = { -1, 0, FALSE };
      g_autofree char *detail = NULL;
      assert_delivered (deliver_journaled (mbox, &j, size, &detail), detail);
      g_assert_cmpuint (j.calls, ==, 1);        /* the same offset, made durable again */
      g_assert_cmpint (j.recorded, ==, size);
      g_autofree char *after = read_file (mbox);
      g_autofree char *expected = g_strconcat (before, entry->str, NULL);
      g_assert_cmpstr (after, ==, expected);
      g_remove (mbox);
    }
  remove_tree (scratch);
}

/* The earlier attempt wrote nothing and other mail came at its offset (or the
 * file is shorter than the offset): append at the end, record the new offset. */
static void
test_mbox_journal_nothing_there (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autoptr (GString) entry = journaled_entry (scratch);
  const gint64 offsets[] = { 0, -2, 1000000 };  /* -2: the size before the bounce */
  for (gsize o = 0; o < G_N_ELEMENTS (offsets); o++)
    {
      gint64 size;
      g_autofree char *mbox = mbox_with_one_entry (scratch, &size);
      g_autofree char *detail = NULL;
      GmDeliveryInfo bounce_info = null_sender_info ();
      assert_delivered (gm_deliver_mbox (mbox, &bounce_info, bounce, strlen (bounce), &detail),
                        detail);
      g_autofree char *before = read_file (mbox);
      TestJournal j = { -1, 0, FALSE };
      assert_delivered (deliver_journaled (mbox, &j, offsets[o] == -2 ? size : offsets[o], &detail),
                        detail);
      g_assert_cmpuint (j.calls, ==, 1);
      g_assert_cmpint (j.recorded, ==, strlen (before));
      g_autofree char *after = read_file (mbox);
      g_autofree char *expected = g_strconcat (before, entry->str, NULL);
      g_assert_cmpstr (after, ==, expected);
      g_remove (mbox);
    }
  remove_tree (scratch);
}

/* Part of our entry, then other mail (another program appended after the
 * crash): it cannot be cut out; the entry is appended whole and the damage
 * logged. */
static void
test_mbox_journal_damaged (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autoptr (GString) entry = journaled_entry (scratch);
  gint64 size;
  g_autofree char *mbox = mbox_with_one_entry (scratch, &size);
  append_bytes (mbox, entry->str, entry->len - 5);
  g_autofree char *detail = NULL;
  GmDeliveryInfo bounce_info = null_sender_info ();
  assert_delivered (gm_deliver_mbox (mbox, &bounce_info, bounce, strlen (bounce), &detail), detail);
  g_autofree char *before = read_file (mbox);
  TestJournal j = { -1, 0, FALSE };
  assert_delivered (deliver_journaled (mbox, &j, size, &detail), detail);
  g_autofree char *after = read_file (mbox);
  g_autofree char *expected = g_strconcat (before, entry->str, NULL);
  g_assert_cmpstr (after, ==, expected);
  remove_tree (scratch);
}

/* A server killed in the middle of an append leaves its dot-lock, which says
 * where the append began: the next delivery, whichever message it is for,
 * cuts the mbox back there before appending (else its entry would follow
 * half a message, and the mbox would be damaged for good). */
static void
test_mbox_dead_writer_cut (void)
{
  g_autofree char *scratch = make_scratch ();
  gint64 size;
  g_autofree char *mbox = mbox_with_one_entry (scratch, &size);
  g_autofree char *before = read_file (mbox);
  g_autoptr (GString) entry = journaled_entry (scratch);
  append_bytes (mbox, entry->str, entry->len / 2);       /* what the dead process wrote */
  g_autofree char *lock = g_strconcat (mbox, ".lock", NULL);
  g_autofree char *owner = g_strdup_printf ("%d:%s %016" G_GINT64_MODIFIER "X\n", (int) dead_pid (),
                                            g_get_host_name (), size);
  g_assert_true (g_file_set_contents (lock, owner, -1, NULL));
  g_autofree char *detail = NULL;
  GmDeliveryInfo bounce_info = null_sender_info ();
  assert_delivered (gm_deliver_mbox (mbox, &bounce_info, bounce, strlen (bounce), &detail), detail);
  g_autofree char *after = read_file (mbox);
  g_assert_true (g_str_has_prefix (after, before));
  g_assert_true (g_str_has_prefix (after + strlen (before), "From MAILER-DAEMON "));
  g_assert_false (g_file_test (lock, G_FILE_TEST_EXISTS));

  /* Without an offset (it died before the append began) nothing is cut. */
  g_autofree char *whole = read_file (mbox);
  g_autofree char *early = g_strdup_printf ("%d:%s ----------------\n", (int) dead_pid (),
                                            g_get_host_name ());
  g_assert_true (g_file_set_contents (lock, early, -1, NULL));
  assert_delivered (gm_deliver_mbox (mbox, &bounce_info, bounce, strlen (bounce), &detail), detail);
  g_autofree char *last = read_file (mbox);
  g_assert_true (g_str_has_prefix (last, whole));
  g_assert_cmpuint (strlen (last), >, strlen (whole));
  remove_tree (scratch);
}

/* Several threads find the dead process's lock at once: one repairs and
 * removes it, and the others must not take the lock they then make for a
 * stale one (a removed file's inode number comes back at once). */
static void
test_mbox_dead_writer_cut_concurrent (void)
{
  for (int round = 0; round < 5; round++)
    {
      g_autofree char *scratch = make_scratch ();
      gint64 size;
      g_autofree char *mbox = mbox_with_one_entry (scratch, &size);
      g_autofree char *before = read_file (mbox);
      append_bytes (mbox, "From half a message", 19);
      g_autofree char *lock = g_strconcat (mbox, ".lock", NULL);
      g_autofree char *owner = g_strdup_printf ("%d:%s %016" G_GINT64_MODIFIER "X\n",
                                                (int) dead_pid (), g_get_host_name (), size);
      g_assert_true (g_file_set_contents (lock, owner, -1, NULL));
      GThread *threads[MBOX_THREADS];
      for (int t = 0; t < MBOX_THREADS; t++)
        threads[t] = g_thread_new ("mbox", deliver_many, mbox);
      for (int t = 0; t < MBOX_THREADS; t++)
        g_thread_join (threads[t]);
      g_autofree char *contents = read_file (mbox);
      g_assert_true (g_str_has_prefix (contents, before));
      g_auto (GStrv) entries = g_strsplit (contents + strlen (before),
                                           "From alice@client.example Wed Nov 25 12:00:00 2026\n", -1);
      g_assert_cmpuint (g_strv_length (entries), ==, MBOX_THREADS * MBOX_MESSAGES + 1);
      g_assert_cmpstr (entries[0], ==, "");
      for (guint i = 1; entries[i]; i++)
        {
          g_assert_true (g_str_has_prefix (entries[i], "Return-Path: <alice@client.example>\n"));
          g_assert_true (g_str_has_suffix (entries[i], ">From \n\n"));
        }
      g_assert_false (g_file_test (lock, G_FILE_TEST_EXISTS));
      remove_tree (scratch);
    }
}

/* While a delivery holds the dot-lock, it names this process and host. */
static char *lock_seen;

static gboolean
record_lock_content (gpointer data, gint64 offset, char **detail)
{
  g_free (lock_seen);
  lock_seen = read_file (data);
  return TRUE;
}

static void
test_mbox_lock_content (void)
{
  g_autofree char *scratch = make_scratch ();
  g_autofree char *mbox = g_build_filename (scratch, "bob", NULL);
  g_autofree char *lock = g_strconcat (mbox, ".lock", NULL);
  GmMboxJournal journal = { -1, record_lock_content, lock };
  GmDeliveryInfo info = alice_to_bob;
  info.journal = &journal;
  g_autofree char *detail = NULL;
  assert_delivered (gm_deliver_mbox (mbox, &info, message, strlen (message), &detail), detail);
  g_autofree char *expected = g_strdup_printf ("%d:%s ----------------\n", (int) getpid (),
                                               g_get_host_name ());
  g_assert_cmpstr (lock_seen, ==, expected);
  g_clear_pointer (&lock_seen, g_free);
  remove_tree (scratch);
}

/* A journal that cannot record: nothing is appended, the delivery is deferred. */
static void
test_mbox_journal_record_fails (void)
{
  g_autofree char *scratch = make_scratch ();
  gint64 size;
  g_autofree char *mbox = mbox_with_one_entry (scratch, &size);
  g_autofree char *before = read_file (mbox);
  TestJournal j = { -1, 0, TRUE };
  g_autofree char *detail = NULL;
  g_assert_cmpint (deliver_journaled (mbox, &j, -1, &detail), ==, GM_DELIVERY_TEMPFAIL);
  g_assert_cmpstr (detail, ==, "record: injected failure");
  g_autofree char *after = read_file (mbox);
  g_assert_cmpstr (after, ==, before);
  g_autoptr (GPtrArray) beside = list_dir (scratch);
  g_assert_cmpuint (beside->len, ==, 1);        /* no lock left */
  remove_tree (scratch);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/deliver/maildir/content", test_maildir_content);
  g_test_add_func ("/deliver/maildir/no-duplicates", test_maildir_no_duplicates);
  g_test_add_func ("/deliver/maildir/hostname-encoding", test_maildir_hostname_encoding);
  g_test_add_func ("/deliver/maildir/stale-tmp", test_maildir_stale_tmp);
  g_test_add_func ("/deliver/maildir/tmp-beside-delivered", test_maildir_tmp_beside_delivered);
  g_test_add_func ("/deliver/maildir/wrong-type", test_maildir_wrong_type);
  g_test_add_func ("/deliver/maildir/write-failure", test_maildir_write_failure);
  g_test_add_func ("/deliver/maildir/permission-denied", test_maildir_permission_denied);
  g_test_add_func ("/deliver/mbox/content", test_mbox_content);
  g_test_add_func ("/deliver/mbox/is-directory", test_mbox_is_directory);
  g_test_add_func ("/deliver/mbox/rollback", test_mbox_rollback);
  g_test_add_func ("/deliver/mbox/permission-denied", test_mbox_permission_denied);
  g_test_add_func ("/deliver/mbox/stale-lock", test_mbox_stale_lock);
  g_test_add_func ("/deliver/mbox/busy-lock", test_mbox_busy_lock);
  g_test_add_func ("/deliver/mbox/dead-owner-lock", test_mbox_dead_owner_lock);
  g_test_add_func ("/deliver/mbox/own-pid-leftover-lock", test_mbox_own_pid_leftover_lock);
  g_test_add_func ("/deliver/mbox/other-host-lock", test_mbox_other_host_lock);
  g_test_add_func ("/deliver/mbox/journal/records-offset", test_mbox_journal_records_offset);
  g_test_add_func ("/deliver/mbox/journal/already-done", test_mbox_journal_already_done);
  g_test_add_func ("/deliver/mbox/journal/partial", test_mbox_journal_partial);
  g_test_add_func ("/deliver/mbox/journal/nothing-there", test_mbox_journal_nothing_there);
  g_test_add_func ("/deliver/mbox/journal/damaged", test_mbox_journal_damaged);
  g_test_add_func ("/deliver/mbox/journal/record-fails", test_mbox_journal_record_fails);
  g_test_add_func ("/deliver/mbox/dead-writer-cut", test_mbox_dead_writer_cut);
  g_test_add_func ("/deliver/mbox/dead-writer-cut-concurrent", test_mbox_dead_writer_cut_concurrent);
  g_test_add_func ("/deliver/mbox/lock-content", test_mbox_lock_content);
  g_test_add_func ("/deliver/mbox/concurrent", test_mbox_concurrent);
  g_test_add_func ("/deliver/mbox/sender-with-spaces", test_mbox_sender_with_spaces);
  return g_test_run ();
}
