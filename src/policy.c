/* policy.c — running the configuration's rules (DESIGN.md §4).
 *
 * When a session reaches a stage that has rules, the server calls
 * gm_policy_run(): this builds what the rules see (the facts of the session,
 * its per-connection variables, the message in the data stage), calls
 * (guillemot)'s %run-stage through one safe call, and checks the verdict it
 * answers (STYLE.md §11-12). Anything wrong becomes the 451 4.3.0 policy
 * failure and a log line: mail is never accepted or dropped because a rule
 * broke. Rules run synchronously on the main thread for now. */
#include "config.h"
#include "policy.h"

#include <libguile.h>
#include <signal.h>
#include <string.h>
#include <gio/gio.h>

#include "envelope-edit.h"
#include "log.h"
#include "settings.h"
#include "watchdog.h"

/* A symbol interned once: scm_from_utf8_symbol hashes its name at each call. */
#define SYM(name) ({ static SCM sym_; \
                     if (!sym_) sym_ = scm_permanent_object (scm_from_utf8_symbol (name)); \
                     sym_; })

static SCM
stage_symbol (GmStage stage)
{
  static SCM symbols[GM_N_STAGES];
  if (!symbols[stage])
    symbols[stage] = scm_permanent_object (scm_from_utf8_symbol (gm_stage_name (stage)));
  return symbols[stage];
}

static SCM run_stage;           /* (guillemot) %run-stage, protected */
static SCM resume;              /* (guillemot) %resume, protected */
static SCM current_rules;       /* the rule set new sessions get, protected */
static guint current_mask;      /* its stages */
static GHashTable *sessions;    /* GmSession* -> SessionPolicy* */
static GHashTable *operations;  /* name -> GmPolicyOperation */

/* ---- The message in the data stage ------------------------------------ */

/* What a message object points to; body is NULL once its stage is over.
 * A queued message is read-only: its file is already on disk. */
typedef struct
{
  GString *body;
  gboolean read_only;
} MessageHandle;

static MessageHandle *
message_handle (SCM msg, const char *who)
{
  SCM_ASSERT_TYPE (SCM_POINTER_P (msg), msg, SCM_ARG1, who, "message");
  MessageHandle *h = scm_to_pointer (msg);
  if (!h->body)
    scm_misc_error (who, "the message is only valid while the rules of its stage run", SCM_EOL);
  return h;
}

/* For the primitives that change headers. */
static MessageHandle *
writable_message (SCM msg, const char *who)
{
  MessageHandle *h = message_handle (msg, who);
  if (h->read_only)
    scm_misc_error (who, "headers can only change before the message is queued (data stage)",
                    SCM_EOL);
  return h;
}

GString *
gm_policy_message_body (SCM msg, const char *who)
{
  return message_handle (msg, who)->body;
}

/* Length of the header section: up to and including the empty line, or the
 * whole message when there is none. */
static gsize
header_section_length (const GString *body)
{
  if (body->len > 0 && body->str[0] == '\n')
    return 0;
  /* memmem: g_strstr_len stops at a NUL, and a NUL in a header made the
   * body count as headers (found by tests/fuzz/fuzz-headers.c). */
  const char *end = memmem (body->str, body->len, "\n\n", 2);
  return end ? (gsize) (end - body->str) + 1 : body->len;
}

static SCM
text_to_scm (const char *p, gsize len)
{
  if (g_utf8_validate (p, len, NULL))
    return scm_from_utf8_stringn (p, len);
  return scm_from_latin1_stringn (p, len);   /* 8-bit bytes kept one to one */
}

/* Call FUNC on each header line: NAME, NAME_LEN, START and LENGTH of the
 * whole field (continuation lines included). */
typedef gboolean (*HeaderFunc) (const char *name, gsize name_len, gsize start, gsize len,
                                gpointer data);

static void
for_each_header (const GString *body, HeaderFunc func, gpointer data)
{
  gsize end = header_section_length (body);
  gsize pos = 0;
  while (pos < end)
    {
      gsize start = pos;
      do
        {
          const char *lf = memchr (body->str + pos, '\n', end - pos);
          pos = lf ? (gsize) (lf - body->str) + 1 : end;
        }
      while (pos < end && (body->str[pos] == ' ' || body->str[pos] == '\t'));
      const char *colon = memchr (body->str + start, ':', pos - start);
      if (!colon)
        continue;               /* not a header field: skipped */
      if (!func (body->str + start, colon - (body->str + start), start, pos - start, data))
        return;
    }
}

static gboolean
collect_header (const char *name, gsize name_len, gsize start, gsize len, gpointer data)
{
  SCM *list = data;
  const char *value = name + name_len + 1;
  const char *end = name + len;
  while (value < end && (*value == ' ' || *value == '\t'))
    value++;
  /* Unfold (RFC 5322 §2.2.3): line breaks before white space go. */
  GString *unfolded = g_string_sized_new (end - value);
  for (const char *p = value; p < end; p++)
    if (*p != '\n')
      g_string_append_c (unfolded, *p);
  *list = scm_cons (scm_cons (text_to_scm (name, name_len),
                              text_to_scm (unfolded->str, unfolded->len)), *list);
  g_string_free (unfolded, TRUE);
  return TRUE;
}

/* (%message-headers msg) → list of (name . value), in order. */
static SCM
message_headers (SCM msg)
{
  MessageHandle *h = message_handle (msg, "header-ref");
  SCM list = SCM_EOL;
  for_each_header (h->body, collect_header, &list);
  return scm_reverse_x (list, SCM_EOL);
}

typedef struct
{
  const char *name;
  SCM values;
} ValueScan;

static gboolean
collect_values (const char *name, gsize name_len, gsize start, gsize len, gpointer data)
{
  ValueScan *scan = data;
  if (strlen (scan->name) != name_len || g_ascii_strncasecmp (name, scan->name, name_len) != 0)
    return TRUE;
  SCM pair = SCM_EOL;
  collect_header (name, name_len, start, len, &pair);
  scan->values = scm_cons (scm_cdar (pair), scan->values);
  return TRUE;
}

/* (%message-header-values msg name) → the values of NAME, in order: what
 * header-ref answers, without building the whole header list. */
static SCM
message_header_values (SCM msg, SCM name)
{
  MessageHandle *h = message_handle (msg, "header-ref");
  char *n = scm_to_utf8_string (name);
  ValueScan scan = { n, SCM_EOL };
  for_each_header (h->body, collect_values, &scan);
  free (n);
  return scm_reverse_x (scan.values, SCM_EOL);
}

/* (%message-add-header! msg name value bottom?) */
static SCM
message_add_header (SCM msg, SCM name, SCM value, SCM bottom)
{
  MessageHandle *h = writable_message (msg, "header-add!");
  char *n = scm_to_utf8_string (name);
  char *v = scm_to_utf8_string (value);
  g_autofree char *field = g_strdup_printf ("%s: %s\n", n, v);
  free (n);
  free (v);
  gsize at = scm_is_true (bottom) ? header_section_length (h->body) : 0;
  /* At the bottom: before the empty line that ends the section. */
  if (at > 0 && h->body->str[at - 1] == '\n' && at >= 2 && h->body->str[at - 2] == '\n')
    at--;
  else if (at > 0 && at == h->body->len && h->body->str[at - 1] != '\n')
    g_string_append_c (h->body, '\n'), at++;
  g_string_insert (h->body, at, field);
  return SCM_UNSPECIFIED;
}

typedef struct
{
  const char *name;
  GArray *spans;                /* of gsize pairs: start, length */
} RemoveScan;

static gboolean
find_header (const char *name, gsize name_len, gsize start, gsize len, gpointer data)
{
  RemoveScan *scan = data;
  if (strlen (scan->name) == name_len && g_ascii_strncasecmp (name, scan->name, name_len) == 0)
    {
      g_array_append_val (scan->spans, start);
      g_array_append_val (scan->spans, len);
    }
  return TRUE;
}

/* (%message-remove-header! msg name) → how many were removed */
static SCM
message_remove_header (SCM msg, SCM name)
{
  MessageHandle *h = writable_message (msg, "header-remove!");
  char *n = scm_to_utf8_string (name);
  RemoveScan scan = { n, g_array_new (FALSE, FALSE, sizeof (gsize)) };
  for_each_header (h->body, find_header, &scan);
  free (n);
  guint count = scan.spans->len / 2;
  for (guint i = count; i > 0; i--)       /* from the end: offsets stay valid */
    g_string_erase (h->body, g_array_index (scan.spans, gsize, 2 * i - 2),
                    g_array_index (scan.spans, gsize, 2 * i - 1));
  g_array_free (scan.spans, TRUE);
  return scm_from_uint (count);
}

/* (%message-set-header! msg name value) → #t when a field was replaced, #f
 * when none existed and one was added at the top. The first field NAME gets
 * the new value in place; the others go. */
static SCM
message_set_header (SCM msg, SCM name, SCM value)
{
  MessageHandle *h = writable_message (msg, "header-set!");
  char *n = scm_to_utf8_string (name);
  char *v = scm_to_utf8_string (value);
  g_autofree char *field = g_strdup_printf ("%s: %s\n", n, v);
  RemoveScan scan = { n, g_array_new (FALSE, FALSE, sizeof (gsize)) };
  for_each_header (h->body, find_header, &scan);
  free (n);
  free (v);
  guint count = scan.spans->len / 2;
  for (guint i = count; i > 1; i--)
    g_string_erase (h->body, g_array_index (scan.spans, gsize, 2 * i - 2),
                    g_array_index (scan.spans, gsize, 2 * i - 1));
  if (count > 0)
    {
      g_string_erase (h->body, g_array_index (scan.spans, gsize, 0),
                      g_array_index (scan.spans, gsize, 1));
      g_string_insert (h->body, g_array_index (scan.spans, gsize, 0), field);
    }
  else
    g_string_insert (h->body, 0, field);
  g_array_free (scan.spans, TRUE);
  return scm_from_bool (count > 0);
}

/* (%message-rename-header! msg old new) → how many fields were renamed */
static SCM
message_rename_header (SCM msg, SCM old_name, SCM new_name)
{
  MessageHandle *h = writable_message (msg, "header-rename!");
  char *o = scm_to_utf8_string (old_name);
  char *n = scm_to_utf8_string (new_name);
  RemoveScan scan = { o, g_array_new (FALSE, FALSE, sizeof (gsize)) };
  for_each_header (h->body, find_header, &scan);
  guint count = scan.spans->len / 2;
  gsize old_len = strlen (o);
  for (guint i = count; i > 0; i--)
    {
      gsize start = g_array_index (scan.spans, gsize, 2 * i - 2);
      g_string_erase (h->body, start, old_len);
      g_string_insert (h->body, start, n);
    }
  free (o);
  free (n);
  g_array_free (scan.spans, TRUE);
  return scm_from_uint (count);
}

/* ---- The session, for envelope changes -------------------------------- */

/* What a session object points to, while its stage runs (live): the SMTP
 * session, or in the queued and delivery stages the queued message's
 * envelope. */
typedef struct
{
  gboolean live;
  GmSession *session;
  GmEnvelope *env;
  GmStage stage;
  gboolean *changed;            /* set when a queued rule changes ENV */
} SessionHandle;

static SessionHandle *
handle_of (SCM handle, const char *who)
{
  SCM_ASSERT_TYPE (SCM_POINTER_P (handle), handle, SCM_ARG1, who, "session");
  SessionHandle *h = scm_to_pointer (handle);
  if (!h->live)
    scm_misc_error (who, "the session can only be changed while its rules run", SCM_EOL);
  return h;
}

static const GmEnvelope *
envelope_of (const SessionHandle *h)
{
  return h->session ? gm_session_envelope (h->session) : h->env;
}

/* (%session-sender h) → the sender now, or #f before MAIL */
static SCM
session_sender (SCM handle)
{
  SessionHandle *h = handle_of (handle, "sender");
  const char *arg;
  if (h->session && gm_session_policy_stage (h->session, &arg) == GM_STAGE_MAIL)
    return scm_from_utf8_string (arg);
  const GmEnvelope *env = envelope_of (h);
  return env ? scm_from_utf8_string (env->sender) : SCM_BOOL_F;
}

SCM
gm_policy_recipients (const GmEnvelope *env)
{
  SCM list = SCM_EOL;
  for (guint i = env ? env->rcpts->len : 0; i > 0; i--)
    {
      GmSpoolRcpt *r = g_ptr_array_index (env->rcpts, i - 1);
      list = scm_cons (scm_from_utf8_string (r->address), list);
    }
  return list;
}

/* (%session-recipients h) → the recipients now */
static SCM
session_recipients (SCM handle)
{
  return gm_policy_recipients (envelope_of (handle_of (handle, "recipients")));
}

/* The handle of a rule that may change the envelope: any SMTP stage, or the
 * queued stage (the queue file is then written again). */
static SessionHandle *
changing_handle (SCM handle, const char *who)
{
  SessionHandle *h = handle_of (handle, who);
  if (!h->session && h->stage != GM_STAGE_QUEUED)
    scm_misc_error (who, "the envelope can only change up to the queued stage", SCM_EOL);
  return h;
}

static void
refused (const char *who, const char *address, const char *reason)
{
  scm_misc_error (who, "~S: ~A", scm_list_2 (scm_from_utf8_string (address),
                                             scm_from_utf8_string (reason)));
}

typedef gboolean (*SessionChange) (GmSession *s, const char *address, const char **reason);
typedef gboolean (*EnvelopeChange) (GmEnvelope *env, const char *address, const char **reason);

/* Apply a change with ADDRESS; a refusal becomes a Scheme error naming WHO. */
static SCM
change_envelope (SCM handle, SCM address, const char *who, SessionChange in_session,
                 EnvelopeChange queued)
{
  SessionHandle *h = changing_handle (handle, who);
  char *a = scm_to_utf8_string (address);
  const char *reason = NULL;
  gboolean ok = h->session ? in_session (h->session, a, &reason) : queued (h->env, a, &reason);
  if (ok && !h->session)
    *h->changed = TRUE;
  scm_dynwind_begin (0);
  scm_dynwind_free (a);
  if (!ok)
    refused (who, a, reason);
  scm_dynwind_end ();
  return SCM_UNSPECIFIED;
}

static SCM
session_set_sender (SCM handle, SCM address)
{
  return change_envelope (handle, address, "set-sender!", gm_session_set_sender,
                          gm_envelope_set_sender);
}

static SCM
session_add_recipient (SCM handle, SCM address)
{
  return change_envelope (handle, address, "add-recipient!", gm_session_add_recipient,
                          gm_envelope_add_recipient);
}

static SCM
session_remove_recipient (SCM handle, SCM address)
{
  SessionHandle *h = changing_handle (handle, "remove-recipient!");
  char *a = scm_to_utf8_string (address);
  gboolean removed = h->session ? gm_session_remove_recipient (h->session, a)
    : gm_envelope_remove_recipient (h->env, a);
  free (a);
  if (removed && !h->session)
    *h->changed = TRUE;
  return scm_from_bool (removed);
}

/* (%session-deliver-to! h rcpt kind template). In the delivery stage the
 * choice is for this attempt only: it is not written to the queue file. */
static SCM
session_deliver_to (SCM handle, SCM address, SCM kind, SCM template)
{
  SessionHandle *h = handle_of (handle, "deliver-to!");
  GmTransport t = scm_is_eq (kind, SYM ("mbox")) ? GM_TRANSPORT_MBOX
    : GM_TRANSPORT_MAILDIR;
  char *a = scm_to_utf8_string (address);
  char *tpl = scm_to_utf8_string (template);
  const char *reason = NULL;
  gboolean ok = h->session ? gm_session_set_mailbox (h->session, a, t, tpl, &reason)
    : gm_envelope_set_mailbox (h->env, a, t, tpl, &reason);
  free (tpl);
  if (ok && h->stage == GM_STAGE_QUEUED)
    *h->changed = TRUE;
  scm_dynwind_begin (0);
  scm_dynwind_free (a);
  if (!ok)
    refused ("deliver-to!", a, reason);
  scm_dynwind_end ();
  return SCM_UNSPECIFIED;
}

/* (%log queue-id-or-#f text) */
static SCM
log_from_scheme (SCM queue_id, SCM text)
{
  char *t = scm_to_utf8_string (text);
  char *id = scm_is_string (queue_id) ? scm_to_utf8_string (queue_id) : NULL;
  g_strdelimit (t, "\r\n", ' ');       /* one event, one line */
  gm_log (id, "%s", t);
  free (t);
  free (id);
  return SCM_UNSPECIFIED;
}

/* (%rule-overdue?) → has the stage's code run past #:rule-time-limit? */
static SCM
rule_overdue (void)
{
  return scm_from_bool (gm_watchdog_overdue ());
}

void
gm_policy_define_primitives (void)
{
  scm_c_define_gsubr ("%message-headers", 1, 0, 0, (scm_t_subr) message_headers);
  scm_c_define_gsubr ("%message-add-header!", 4, 0, 0, (scm_t_subr) message_add_header);
  scm_c_define_gsubr ("%message-remove-header!", 2, 0, 0, (scm_t_subr) message_remove_header);
  scm_c_define_gsubr ("%message-header-values", 2, 0, 0, (scm_t_subr) message_header_values);
  scm_c_define_gsubr ("%message-set-header!", 3, 0, 0, (scm_t_subr) message_set_header);
  scm_c_define_gsubr ("%message-rename-header!", 3, 0, 0, (scm_t_subr) message_rename_header);
  scm_c_define_gsubr ("%log", 2, 0, 0, (scm_t_subr) log_from_scheme);
  scm_c_define_gsubr ("%rule-overdue?", 0, 0, 0, (scm_t_subr) rule_overdue);
  scm_c_define_gsubr ("%session-sender", 1, 0, 0, (scm_t_subr) session_sender);
  scm_c_define_gsubr ("%session-recipients", 1, 0, 0, (scm_t_subr) session_recipients);
  scm_c_define_gsubr ("%session-set-sender!", 2, 0, 0, (scm_t_subr) session_set_sender);
  scm_c_define_gsubr ("%session-add-recipient!", 2, 0, 0, (scm_t_subr) session_add_recipient);
  scm_c_define_gsubr ("%session-remove-recipient!", 2, 0, 0, (scm_t_subr) session_remove_recipient);
  scm_c_define_gsubr ("%session-deliver-to!", 4, 0, 0, (scm_t_subr) session_deliver_to);
  scm_c_export ("%session-sender", "%session-recipients", "%session-set-sender!",
                "%session-add-recipient!", "%session-remove-recipient!", "%session-deliver-to!",
                NULL);
  scm_c_export ("%message-headers", "%message-add-header!", "%message-remove-header!",
                "%message-set-header!", "%message-rename-header!", "%message-header-values",
                "%log", "%rule-overdue?", NULL);
}

/* ---- Per-session state ------------------------------------------------ */

/* What the policy keeps for a session, or for a queued message during one
 * delivery attempt (SESSION NULL, ENV and MESSAGE set). The SCM values live
 * in one protected vector: [0] per-connection (or per-attempt) variables,
 * [1] the rule set, [2] the continuation of suspended rules (#f when none). */
struct GmPolicyWait
{
  GmSession *session;
  GmEnvelope *env;              /* a queued message's */
  GString message;              /* a read-only view of its bytes */
  gboolean changed;             /* queued rules changed ENV */
  SCM cell;
  guint stage_mask;
  MessageHandle *handle;        /* the message object, while its stage's rules run */
  SessionHandle *session_handle; /* the session object, while the rules run */
  GmPolicyDone done;            /* while suspended */
  gpointer done_data;
  guint timer;                  /* the pause operation's timeout, if any */
};

typedef GmPolicyWait SessionPolicy;

/* The message and session objects of the stage running are kept in the cell
 * too: C holds raw pointers to what they point to (collectable memory), so
 * they must not be collected before the stage ends. */
enum { CELL_VARS, CELL_RULES, CELL_K, CELL_MESSAGE, CELL_SESSION, CELL_CONN_FACTS, CELL_SIZE };

static guint
mask_of (SCM rule_set)
{
  guint mask = 0;
  SCM stages = scm_call_1 (scm_c_private_ref ("guillemot", "%rule-stages"), rule_set);
  for (; scm_is_pair (stages); stages = scm_cdr (stages))
    for (guint st = 0; st < GM_N_STAGES; st++)
      if (scm_is_eq (scm_car (stages), stage_symbol (st)))
        mask |= 1u << st;
  return mask;
}

static void pause_operation (SCM args, GmPolicyWait *wait);

void
gm_policy_init (void)
{
  run_stage = scm_c_private_ref ("guillemot", "%run-stage");
  resume = scm_c_private_ref ("guillemot", "%resume");
  scm_gc_protect_object (run_stage);
  scm_gc_protect_object (resume);
  sessions = g_hash_table_new (NULL, NULL);
  operations = g_hash_table_new (g_str_hash, g_str_equal);
  current_rules = SCM_EOL;
  scm_gc_protect_object (current_rules);
  gm_policy_register_operation ("pause", pause_operation);
  /* The time limit of rules: the watchdog's SIGALRM interrupts the rule
   * (%on-alarm); system calls it lands in are restarted. */
  scm_sigaction (scm_from_int (SIGALRM), scm_c_private_ref ("guillemot", "%on-alarm"),
                 scm_from_int (SA_RESTART));
  gm_watchdog_start ();
  gm_policy_install_loaded ();
}

void
gm_policy_install_loaded (void)
{
  SCM rules = scm_call_0 (scm_c_private_ref ("guillemot", "%loaded-rules"));
  scm_gc_unprotect_object (current_rules);
  current_rules = rules;
  scm_gc_protect_object (current_rules);
  current_mask = mask_of (rules);
}

static SessionPolicy *
policy_new (void)
{
  SessionPolicy *sp = g_new0 (SessionPolicy, 1);
  /* Protected before anything else is allocated: the collector does not
   * scan SP (g_malloc memory), so a collection would free an unprotected
   * cell under us. */
  sp->cell = scm_gc_protect_object (scm_c_make_vector (CELL_SIZE, SCM_BOOL_F));
  scm_c_vector_set_x (sp->cell, CELL_VARS, scm_c_make_hash_table (8));
  scm_c_vector_set_x (sp->cell, CELL_RULES, current_rules);
  sp->stage_mask = current_mask;
  return sp;
}

static void
policy_free (SessionPolicy *sp)
{
  if (sp->timer)
    g_source_remove (sp->timer);
  if (sp->handle)
    sp->handle->body = NULL;
  if (sp->session_handle)
    sp->session_handle->live = FALSE;
  scm_gc_unprotect_object (sp->cell);
  g_free (sp);
}

guint
gm_policy_session_start (GmSession *s)
{
  SessionPolicy *sp = policy_new ();
  sp->session = s;
  g_hash_table_insert (sessions, s, sp);
  return sp->stage_mask;
}

void
gm_policy_forget (GmSession *s)
{
  SessionPolicy *sp = sessions ? g_hash_table_lookup (sessions, s) : NULL;
  if (!sp)
    return;
  g_hash_table_remove (sessions, s);
  policy_free (sp);
}

guint
gm_policy_stages (void)
{
  return current_mask;
}

GmPolicyMessage *
gm_policy_message_new (GmEnvelope *env, char *message, gsize len)
{
  SessionPolicy *sp = policy_new ();
  sp->env = env;
  sp->message = (GString) { message, len, len + 1 };
  return sp;
}

gboolean
gm_policy_message_changed (GmPolicyMessage *pm)
{
  return pm->changed;
}

void
gm_policy_message_free (GmPolicyMessage *pm)
{
  if (pm)
    policy_free (pm);
}

/* ---- Facts ------------------------------------------------------------- */

static SCM
opt_string (const char *s)
{
  return s ? scm_from_utf8_string (s) : SCM_BOOL_F;
}

#define FACT(key, value) facts = scm_acons (SYM (key), (value), facts)

/* The facts of SP's session at its current stage. Those of the connection
 * are made once and shared by every stage: fewer allocations per stage. */
static SCM
session_facts (SessionPolicy *sp, GmStage stage)
{
  GmSession *s = sp->session;
  const GmEnvelope *env = gm_session_envelope (s);
  SCM facts = scm_c_vector_ref (sp->cell, CELL_CONN_FACTS);
  if (scm_is_false (facts))
    {
      const GmConnInfo *c = gm_session_conn (s);
      facts = SCM_EOL;
      FACT ("client-address", scm_from_utf8_string (c->client_address));
      FACT ("client-port", scm_from_uint16 (c->client_port));
      FACT ("local-address", scm_from_utf8_string (c->local_address));
      FACT ("local-port", scm_from_uint16 (c->local_port));
      scm_c_vector_set_x (sp->cell, CELL_CONN_FACTS, facts);
    }
  FACT ("helo", opt_string (gm_session_helo (s)));
  FACT ("esmtp", scm_from_bool (gm_session_esmtp (s)));
  FACT ("tls", SCM_BOOL_F);                  /* STARTTLS and AUTH come with their issue */
  FACT ("authenticated-user", SCM_BOOL_F);
  /* The sender and the recipients are read live (%session-sender,
   * %session-recipients): rules may change them. */
  if (env && stage == GM_STAGE_DATA)
    {
      FACT ("queue-id", opt_string (env->id));
      FACT ("size", scm_from_uint64 (gm_session_size (s)));
    }
  return facts;
}

/* What the queue file keeps of the session: the ports are not kept. */
static SCM
message_facts (const SessionPolicy *sp)
{
  SCM facts = SCM_EOL;
  FACT ("client-address", opt_string (sp->env->client));
  FACT ("client-port", SCM_BOOL_F);
  FACT ("local-address", SCM_BOOL_F);
  FACT ("local-port", SCM_BOOL_F);
  FACT ("helo", opt_string (sp->env->helo));
  FACT ("esmtp", scm_from_bool (sp->env->protocol && strcmp (sp->env->protocol, "SMTP") != 0));
  FACT ("tls", SCM_BOOL_F);
  FACT ("authenticated-user", SCM_BOOL_F);
  FACT ("queue-id", scm_from_utf8_string (sp->env->id));
  FACT ("size", scm_from_uint64 (sp->message.len));
  return facts;
}

#undef FACT

/* ---- Calling Scheme ---------------------------------------------------- */

typedef struct
{
  SCM proc;
  SCM args;
} Call;

static SCM
call_body (void *data)
{
  Call *call = data;
  return scm_apply_0 (call->proc, call->args);
}

static SCM
call_failed (void *data, SCM key, SCM args)
{
  SCM port = scm_open_output_string ();
  scm_print_exception (port, SCM_BOOL_F, key, args);
  char *text = scm_to_utf8_string (scm_get_output_string (port));
  gm_log (NULL, "policy error: %s", text);
  free (text);
  return SCM_BOOL_F;
}

/* The one safe call into the rules (STYLE.md §11): nothing escapes into
 * GLib, and the watchdog times the Scheme code. */
static SCM
safe_call (SCM proc, SCM args)
{
  Call call = { proc, args };
  gm_watchdog_enter ();
  SCM result = scm_c_catch (SCM_BOOL_T, call_body, &call, call_failed, NULL, NULL, NULL);
  gm_watchdog_leave ();
  return result;
}

/* Turn (KIND CODE TEXT) into V; FALSE when it is not a valid verdict. */
static gboolean
verdict_from_scm (SCM result, GmVerdict *v, GError **error)
{
  if (scm_is_false (scm_list_p (result)) || scm_ilength (result) != 3)
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "rules answered something unexpected");
      return FALSE;
    }
  SCM kind = scm_car (result);
  gm_verdict_clear (v);
  if (scm_is_eq (kind, SYM ("next")))
    v->kind = GM_VERDICT_NEXT;
  else if (scm_is_eq (kind, SYM ("accept")))
    v->kind = GM_VERDICT_ACCEPT;
  else if (scm_is_eq (kind, SYM ("discard")))
    v->kind = GM_VERDICT_DISCARD;
  else if (scm_is_eq (kind, SYM ("quarantine")))
    {
      SCM name = scm_caddr (result);
      char *n = scm_is_string (name) ? scm_to_utf8_string (name) : NULL;
      gboolean ok = n && gm_valid_quarantine_name (n);
      if (!ok)
        g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "invalid quarantine name");
      else
        {
          v->kind = GM_VERDICT_QUARANTINE;
          v->text = g_strdup (n);
        }
      free (n);
      return ok;
    }
  else
    {
      gboolean reject = scm_is_eq (kind, SYM ("reject"));
      if (!reject && !scm_is_eq (kind, SYM ("defer")))
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "unknown verdict");
          return FALSE;
        }
      SCM code = scm_cadr (result), text = scm_caddr (result);
      if (!scm_is_unsigned_integer (code, 0, 999) || !scm_is_string (text))
        {
          g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "verdict without code or text");
          return FALSE;
        }
      char *t = scm_to_utf8_string (text);
      gboolean ok = gm_verdict_set_reply (v, reject ? GM_VERDICT_REJECT : GM_VERDICT_DEFER,
                                          scm_to_uint (code), t, error);
      free (t);
      return ok;
    }
  return TRUE;
}

typedef struct
{
  GmPolicyOperation start;
  SCM args;
  GmPolicyWait *wait;
} StartCall;

static SCM
start_body (void *data)
{
  StartCall *call = data;
  call->start (call->args, call->wait);
  return SCM_BOOL_T;
}

/* The rules answered RESULT. TRUE: V is the verdict. FALSE: they wait for an
 * operation, started here. */
static gboolean
settle (SessionPolicy *sp, SCM result, GmVerdict *v)
{
  if (scm_is_pair (result) && scm_is_eq (scm_car (result), SYM ("suspend")))
    {
      SCM k = scm_cadr (result);
      char *name = scm_to_utf8_string (scm_symbol_to_string (scm_caddr (result)));
      GmPolicyOperation start = g_hash_table_lookup (operations, name);
      if (start)
        {
          scm_c_vector_set_x (sp->cell, CELL_K, k);
          free (name);
          StartCall call = { start, scm_cadddr (result), sp };
          /* An operation that throws on its arguments must not unwind into GLib. */
          if (scm_is_true (scm_c_catch (SCM_BOOL_T, start_body, &call, call_failed, NULL, NULL, NULL)))
            return FALSE;
          scm_c_vector_set_x (sp->cell, CELL_K, SCM_BOOL_F);
          result = SCM_BOOL_F;
          goto verdict;
        }
      gm_log (NULL, "policy error: a rule waits for \"%s\", which this server does not know", name);
      free (name);
      result = SCM_BOOL_F;
    }
verdict:
  if (sp->handle)
    {
      sp->handle->body = NULL;  /* the message object is dead from now on */
      sp->handle = NULL;
    }
  if (sp->session_handle)
    {
      sp->session_handle->live = FALSE;
      sp->session_handle = NULL;
    }
  /* From now on the objects may go: nothing in C points into them any more. */
  scm_c_vector_set_x (sp->cell, CELL_MESSAGE, SCM_BOOL_F);
  scm_c_vector_set_x (sp->cell, CELL_SESSION, SCM_BOOL_F);
  g_autoptr (GError) error = NULL;
  if (scm_is_false (result) || !verdict_from_scm (result, v, &error))
    {
      const GmEnvelope *env = sp->session ? gm_session_envelope (sp->session) : sp->env;
      if (error)
        gm_log (env ? env->id : NULL, "policy error: %s", error->message);
      gm_verdict_set_policy_failure (v);
    }
  return TRUE;
}

/* Run the rules of STAGE with FACTS; MESSAGE (or NULL) becomes the message
 * object, STAGE_ARGS follow the session object. */
static gboolean
run_rules (SessionPolicy *sp, GmStage stage, SCM facts, GString *message, gboolean read_only,
           SCM stage_args, GmVerdict *v, GmPolicyDone done, gpointer data)
{
  SCM msg = SCM_BOOL_F;
  if (message)
    {
      /* Collectable memory: no finalizer to register, run and wait for. */
      sp->handle = scm_gc_malloc_pointerless (sizeof (MessageHandle), "message handle");
      sp->handle->body = message;
      sp->handle->read_only = read_only;
      msg = scm_from_pointer (sp->handle, NULL);
      scm_c_vector_set_x (sp->cell, CELL_MESSAGE, msg);
      stage_args = scm_cons (msg, stage_args);
    }
  sp->session_handle = scm_gc_malloc_pointerless (sizeof (SessionHandle), "session handle");
  *sp->session_handle = (SessionHandle) { TRUE, sp->session, sp->env, stage, &sp->changed };
  SCM handle = scm_from_pointer (sp->session_handle, NULL);
  scm_c_vector_set_x (sp->cell, CELL_SESSION, handle);
  SCM args = scm_list_n (scm_c_vector_ref (sp->cell, CELL_RULES),
                         stage_symbol (stage), facts,
                         scm_c_vector_ref (sp->cell, CELL_VARS), msg, handle, stage_args,
                         SCM_UNDEFINED);
  SCM result = safe_call (run_stage, args);
  sp->done = done;
  sp->done_data = data;
  return settle (sp, result, v);
}

gboolean
gm_policy_run (GmSession *s, GmVerdict *v, GmPolicyDone done, gpointer data)
{
  SessionPolicy *sp = g_hash_table_lookup (sessions, s);
  g_return_val_if_fail (sp != NULL, (gm_verdict_set_policy_failure (v), TRUE));
  const char *arg;
  GmStage stage = gm_session_policy_stage (s, &arg);
  SCM facts = session_facts (sp, stage);
  if (stage == GM_STAGE_DATA)
    return run_rules (sp, stage, facts, gm_session_body (s), FALSE, SCM_EOL, v, done, data);
  SCM stage_args = stage == GM_STAGE_CONNECT ? SCM_EOL : scm_list_1 (scm_from_utf8_string (arg));
  return run_rules (sp, stage, facts, NULL, FALSE, stage_args, v, done, data);
}

gboolean
gm_policy_message_run (GmPolicyMessage *pm, GmStage stage, guint rcpt, GmVerdict *v,
                       GmPolicyDone done, gpointer data)
{
  g_return_val_if_fail (stage == GM_STAGE_QUEUED || stage == GM_STAGE_DELIVERY,
                        (gm_verdict_set_policy_failure (v), TRUE));
  SCM facts = message_facts (pm);
  if (stage == GM_STAGE_QUEUED)
    return run_rules (pm, stage, facts, &pm->message, TRUE, SCM_EOL, v, done, data);
  const GmSpoolRcpt *r = g_ptr_array_index (pm->env->rcpts, rcpt);
  return run_rules (pm, stage, facts, NULL, FALSE, scm_list_1 (scm_from_utf8_string (r->address)),
                    v, done, data);
}

void
gm_policy_wait_finish (GmPolicyWait *wait, SCM value)
{
  SessionPolicy *sp = wait;
  SCM k = scm_c_vector_ref (sp->cell, CELL_K);
  scm_c_vector_set_x (sp->cell, CELL_K, SCM_BOOL_F);
  SCM result = safe_call (resume, scm_list_2 (k, value));
  GmVerdict v = { 0 };
  if (settle (sp, result, &v))
    {
      sp->done (sp->done_data, &v);
      gm_verdict_clear (&v);
    }
}

void
gm_policy_register_operation (const char *name, GmPolicyOperation start)
{
  g_hash_table_insert (operations, (gpointer) name, start);
}

GmSession *
gm_policy_wait_session (GmPolicyWait *wait)
{
  return wait->session;
}

/* ---- The pause operation ----------------------------------------------- */

static gboolean
pause_over (gpointer data)
{
  SessionPolicy *sp = data;
  sp->timer = 0;
  gm_policy_wait_finish (sp, SCM_BOOL_T);
  return G_SOURCE_REMOVE;
}

static void
pause_operation (SCM args, GmPolicyWait *wait)
{
  if (!scm_is_pair (args) || !scm_is_real (scm_car (args)))
    scm_misc_error ("pause", "expected a number of seconds, got ~S", scm_list_1 (args));
  double seconds = CLAMP (scm_to_double (scm_car (args)), 0, 600);
  wait->timer = g_timeout_add ((guint) (seconds * 1000), pause_over, wait);
}
