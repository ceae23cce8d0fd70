/* verdict.h — SMTP stages that policy rules attach to, and their verdicts. */
#pragma once
#include <glib.h>

typedef enum
{
  GM_STAGE_CONNECT,
  GM_STAGE_HELO,
  GM_STAGE_AUTH,                /* rules load; run once AUTH exists */
  GM_STAGE_MAIL,
  GM_STAGE_RCPT,
  GM_STAGE_DATA,
  GM_STAGE_QUEUED,              /* after the 250, once, before the first delivery attempt */
  GM_STAGE_DELIVERY,            /* each recipient, at each delivery attempt */
  GM_N_STAGES
} GmStage;

const char *gm_stage_name (GmStage stage);

typedef enum
{
  GM_VERDICT_NEXT,              /* no decision: the next rule, then the built-in behaviour */
  GM_VERDICT_ACCEPT,            /* skip the stage's remaining rules */
  GM_VERDICT_REJECT,            /* 5xx */
  GM_VERDICT_DEFER,             /* 4xx */
  GM_VERDICT_DISCARD,           /* accept the message, then drop it (logged) */
  GM_VERDICT_QUARANTINE,        /* accept the message, keep it in quarantine/NAME/ (text: NAME) */
} GmVerdictKind;

typedef struct
{
  GmVerdictKind kind;
  guint code;                   /* REJECT and DEFER */
  char esc[12];                 /* enhanced status code, e.g. "5.7.1" */
  char *text;                   /* owned; without the code and enhanced code */
} GmVerdict;

void gm_verdict_clear (GmVerdict *v);

/* Fill V as a REJECT or DEFER answering CODE and TEXT, where TEXT may start
 * with an enhanced status code ("5.7.1 Relaying denied"). Checks (STYLE.md
 * §12): 5xx for reject and 4xx for defer, an enhanced code of the same class
 * (added when missing: 5.7.1 or 4.7.1), no CR or LF, at most 500 bytes of
 * text (the whole reply line stays under RFC 5321's 512).
 * FALSE with a message on error. */
gboolean gm_verdict_set_reply (GmVerdict *v, GmVerdictKind kind, guint code, const char *text,
                               GError **error);

/* The 451 4.3.0 given when a policy failed. */
void gm_verdict_set_policy_failure (GmVerdict *v);

/* A quarantine name: letters, digits, '.', '_' and '-', not starting with a
 * dot, at most 64 bytes (it becomes a directory under spool/quarantine/). */
gboolean gm_valid_quarantine_name (const char *name);
