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
#include <string.h>
#include <gio/gio.h>

#include "log.h"

static SCM run_stage;           /* (guillemot) %run-stage, protected */
static guint stage_mask;
static GHashTable *session_vars; /* GmSession* -> SCM hash table, protected */

/* ---- The message in the data stage ------------------------------------ */

/* What a message object points to; body is NULL once its stage is over. */
typedef struct
{
  GString *body;
} MessageHandle;

static MessageHandle *
message_handle (SCM msg, const char *who)
{
  SCM_ASSERT_TYPE (SCM_POINTER_P (msg), msg, SCM_ARG1, who, "message");
  MessageHandle *h = scm_to_pointer (msg);
  if (!h->body)
    scm_misc_error (who, "the message is only valid while its data rules run", SCM_EOL);
  return h;
}

/* Length of the header section: up to and including the empty line, or the
 * whole message when there is none. */
static gsize
header_section_length (const GString *body)
{
  if (body->len > 0 && body->str[0] == '\n')
    return 0;
  const char *end = g_strstr_len (body->str, body->len, "\n\n");
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

/* (%message-add-header! msg name value bottom?) */
static SCM
message_add_header (SCM msg, SCM name, SCM value, SCM bottom)
{
  MessageHandle *h = message_handle (msg, "header-add!");
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
  MessageHandle *h = message_handle (msg, "header-remove!");
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

void
gm_policy_define_primitives (void)
{
  scm_c_define_gsubr ("%message-headers", 1, 0, 0, (scm_t_subr) message_headers);
  scm_c_define_gsubr ("%message-add-header!", 4, 0, 0, (scm_t_subr) message_add_header);
  scm_c_define_gsubr ("%message-remove-header!", 2, 0, 0, (scm_t_subr) message_remove_header);
  scm_c_define_gsubr ("%log", 2, 0, 0, (scm_t_subr) log_from_scheme);
  scm_c_export ("%message-headers", "%message-add-header!", "%message-remove-header!", "%log",
                NULL);
}

/* ---- Running a stage --------------------------------------------------- */

void
gm_policy_init (void)
{
  run_stage = scm_c_private_ref ("guillemot", "%run-stage");
  scm_gc_protect_object (run_stage);
  session_vars = g_hash_table_new (NULL, NULL);
  stage_mask = 0;
  SCM stages = scm_call_0 (scm_c_private_ref ("guillemot", "%rule-stages"));
  for (; scm_is_pair (stages); stages = scm_cdr (stages))
    for (guint st = 0; st < GM_N_STAGES; st++)
      if (scm_is_eq (scm_car (stages), scm_from_utf8_symbol (gm_stage_name (st))))
        stage_mask |= 1u << st;
}

guint
gm_policy_stage_mask (void)
{
  return stage_mask;
}

static SCM
vars_of (GmSession *s)
{
  SCM vars = g_hash_table_lookup (session_vars, s);
  if (!vars)
    {
      vars = scm_c_make_hash_table (8);
      scm_gc_protect_object (vars);
      g_hash_table_insert (session_vars, s, vars);
    }
  return vars;
}

void
gm_policy_forget (GmSession *s)
{
  SCM vars;
  if (session_vars && (vars = g_hash_table_lookup (session_vars, s)))
    {
      scm_gc_unprotect_object (vars);
      g_hash_table_remove (session_vars, s);
    }
}

static SCM
opt_string (const char *s)
{
  return s ? scm_from_utf8_string (s) : SCM_BOOL_F;
}

static SCM
session_facts (GmSession *s, GmStage stage)
{
  const GmConnInfo *c = gm_session_conn (s);
  const GmEnvelope *env = gm_session_envelope (s);
  SCM facts = SCM_EOL;
#define FACT(key, value) facts = scm_acons (scm_from_utf8_symbol (key), (value), facts)
  FACT ("client-address", scm_from_utf8_string (c->client_address));
  FACT ("client-port", scm_from_uint16 (c->client_port));
  FACT ("local-address", scm_from_utf8_string (c->local_address));
  FACT ("local-port", scm_from_uint16 (c->local_port));
  FACT ("helo", opt_string (gm_session_helo (s)));
  FACT ("esmtp", scm_from_bool (gm_session_esmtp (s)));
  if (env)
    {
      SCM rcpts = SCM_EOL;
      for (guint i = env->rcpts->len; i > 0; i--)
        rcpts = scm_cons (scm_from_utf8_string (((GmSpoolRcpt *) g_ptr_array_index (env->rcpts, i - 1))->address), rcpts);
      FACT ("sender", opt_string (env->sender));
      FACT ("recipients", rcpts);
      if (stage == GM_STAGE_DATA)
        {
          FACT ("queue-id", opt_string (env->id));
          FACT ("size", scm_from_uint64 (gm_session_size (s)));
        }
    }
#undef FACT
  return facts;
}

typedef struct
{
  SCM args[5];
} Call;

static SCM
call_run_stage (void *data)
{
  Call *call = data;
  return scm_apply_0 (run_stage, scm_list_5 (call->args[0], call->args[1], call->args[2],
                                             call->args[3], call->args[4]));
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
  if (scm_is_eq (kind, scm_from_utf8_symbol ("next")))
    v->kind = GM_VERDICT_NEXT;
  else if (scm_is_eq (kind, scm_from_utf8_symbol ("accept")))
    v->kind = GM_VERDICT_ACCEPT;
  else if (scm_is_eq (kind, scm_from_utf8_symbol ("discard")))
    v->kind = GM_VERDICT_DISCARD;
  else
    {
      gboolean reject = scm_is_eq (kind, scm_from_utf8_symbol ("reject"));
      if (!reject && !scm_is_eq (kind, scm_from_utf8_symbol ("defer")))
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

void
gm_policy_run (GmSession *s, GmVerdict *v)
{
  const char *arg;
  GmStage stage = gm_session_policy_stage (s, &arg);
  MessageHandle *handle = NULL;
  SCM msg = SCM_BOOL_F;
  SCM stage_args = SCM_EOL;
  if (stage == GM_STAGE_DATA)
    {
      handle = g_new0 (MessageHandle, 1);
      handle->body = gm_session_body (s);
      msg = scm_from_pointer (handle, g_free);
      stage_args = scm_list_1 (msg);
    }
  else if (stage != GM_STAGE_CONNECT)
    stage_args = scm_list_1 (scm_from_utf8_string (arg));

  Call call = { { scm_from_utf8_symbol (gm_stage_name (stage)), session_facts (s, stage),
                  vars_of (s), msg, stage_args } };
  SCM result = scm_c_catch (SCM_BOOL_T, call_run_stage, &call, call_failed, NULL, NULL, NULL);
  if (handle)
    handle->body = NULL;        /* the message object is dead from now on */
  scm_remember_upto_here_1 (msg);

  g_autoptr (GError) error = NULL;
  if (scm_is_false (result) || !verdict_from_scm (result, v, &error))
    {
      const GmEnvelope *env = gm_session_envelope (s);
      if (error)
        gm_log (env ? env->id : NULL, "policy error in stage %s: %s", gm_stage_name (stage),
                error->message);
      gm_verdict_set_policy_failure (v);
    }
}
