/* policy.h — running the configuration's rules for a session (main thread).
 *
 * Rules may wait for I/O without blocking anyone: gm_policy_run() then
 * answers FALSE and calls DONE later from the main loop. Extensions add the
 * operations rules can wait for with gm_policy_register_operation(): the
 * Scheme side calls (suspend 'NAME ARGS...), the server calls the
 * operation's START with ARGS, and START (or a callback it arranges) calls
 * gm_policy_wait_finish() with the value (suspend ...) returns. */
#pragma once
#include <glib.h>
#include <libguile.h>
#include "smtp-session.h"

/* Define the primitives rules use, in the current module ((guillemot core)). */
void gm_policy_define_primitives (void);

/* Once, after the configuration is loaded: take its rules. */
void gm_policy_init (void);

/* Take the rules of the configuration just loaded again: sessions that start
 * from now on use them; sessions in progress keep theirs. */
void gm_policy_install_loaded (void);

/* A session starts: it gets the current rules. Returns the stages that have
 * rules (bit 1 << GmStage), for gm_session_set_policy(). */
guint gm_policy_session_start (GmSession *s);

typedef void (*GmPolicyDone) (gpointer data, const GmVerdict *v);

/* Run the rules of the stage S is waiting on. TRUE: V is the verdict (a rule
 * error or an invalid answer gives the 451 4.3.0 policy failure, logged).
 * FALSE: the rules wait for an operation; DONE (DATA, verdict) comes later. */
gboolean gm_policy_run (GmSession *s, GmVerdict *v, GmPolicyDone done, gpointer data);

/* The session ended: drop its rules and variables. */
void gm_policy_forget (GmSession *s);

/* The stages with rules in the current rule set (bit 1 << GmStage). */
guint gm_policy_stages (void);

/* The queued and delivery stages run for a queued message, outside any
 * session, once per delivery attempt: ENV and the LEN bytes at MESSAGE (the
 * queue file's) must outlive the object. Variables set by queued rules are
 * seen by delivery rules of the same attempt. */
typedef struct GmPolicyWait GmPolicyMessage;
GmPolicyMessage *gm_policy_message_new (GmEnvelope *env, char *message, gsize len);
/* Run STAGE (GM_STAGE_QUEUED, or GM_STAGE_DELIVERY for recipient RCPT, an
 * index in ENV), as gm_policy_run does. */
gboolean gm_policy_message_run (GmPolicyMessage *pm, GmStage stage, guint rcpt, GmVerdict *v,
                                GmPolicyDone done, gpointer data);
/* Did queued rules change the envelope (then the queue file is rewritten)? */
gboolean gm_policy_message_changed (GmPolicyMessage *pm);
void gm_policy_message_free (GmPolicyMessage *pm);

typedef struct GmPolicyWait GmPolicyWait;
typedef void (*GmPolicyOperation) (SCM args, GmPolicyWait *wait);

void gm_policy_register_operation (const char *name, GmPolicyOperation start);
/* The operation is over: resume the rules with VALUE. Main thread. */
void gm_policy_wait_finish (GmPolicyWait *wait, SCM value);
/* The session waiting, or NULL for a queued message. */
GmSession *gm_policy_wait_session (GmPolicyWait *wait);

/* The message behind the message object MSG given to data rules (LF line
 * ends, header section first), for primitives that read or change it. Throws
 * a Scheme error naming WHO when MSG is not a live message object: call it
 * before allocating anything (STYLE.md §10). */
GString *gm_policy_message_body (SCM msg, const char *who);

/* The recipients of ENV (may be NULL) as a list of strings, in order. */
SCM gm_policy_recipients (const GmEnvelope *env);
