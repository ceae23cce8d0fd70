/* scm-mime.h — the MIME structure of the message given to data rules, for
 * (guillemot mime): its leaf parts, their types, file names and decoded
 * contents, read with GMime. Main thread only. */
#pragma once
#include <glib.h>

/* Deepest nesting of multiparts and attached messages that is walked, and
 * most leaf parts listed: what lies beyond is left out and the list is
 * marked truncated. */
#define GM_MIME_MAX_DEPTH 20
#define GM_MIME_MAX_PARTS 1000
/* Longest a parse may take, in milliseconds (and at most half of
 * #:rule-time-limit): the rest of the message is then taken as missing. */
#define GM_MIME_PARSE_BUDGET 1000

/* Initialise GMime and define the primitives of (guillemot mime) in the
 * current module. Call once, from the definition of (guillemot core). */
void gm_scm_init_mime (void);
