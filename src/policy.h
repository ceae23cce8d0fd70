/* policy.h — running the configuration's rules for a session (main thread). */
#pragma once
#include <glib.h>
#include "smtp-session.h"

/* Define the primitives rules use, in the current module ((guillemot core)). */
void gm_policy_define_primitives (void);

/* Look up the loaded rules. Call after the configuration is loaded. */
void gm_policy_init (void);

/* Stages that have rules (bit 1 << GmStage), for gm_session_set_policy(). */
guint gm_policy_stage_mask (void);

/* Run the rules of the stage S is waiting on, filling V. A rule error or an
 * invalid answer gives the 451 4.3.0 policy failure, logged. */
void gm_policy_run (GmSession *s, GmVerdict *v);

/* The session ended: drop its per-connection variables. */
void gm_policy_forget (GmSession *s);
