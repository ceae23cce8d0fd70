/* smtp-parse.h — SMTP command arguments: paths, domains, ESMTP parameters.
 *
 * RFC 5321 §4.1.2 (syntax), §4.5.3.1 (size limits), RFC 6531 (UTF-8). The
 * parsers work in place on a mutable, NUL-terminated line and never allocate
 * unless they succeed. */
#pragma once
#include <glib.h>

typedef struct
{
  char *local;          /* local part, canonical: quotes removed when the content is a dot-atom */
  char *domain;         /* domain or address literal; NULL for <postmaster> and the null path <> */
  gboolean utf8;        /* has non-ASCII bytes (then valid UTF-8) */
} GmPath;

void gm_path_clear (GmPath *path);
/* "local@domain", "postmaster" or "" (null path); newly allocated. */
char *gm_path_to_string (const GmPath *path);
/* Same, appended to OUT. */
void gm_path_append (GString *out, const GmPath *path);

typedef struct
{
  char *keyword;        /* points into the parsed line */
  char *value;          /* NULL when the parameter has no "=value" */
} GmParam;

#define GM_MAX_PARAMS 16

typedef enum
{
  GM_PATH_SENDER = 1 << 0,      /* the null path <> is allowed */
  GM_PATH_RECIPIENT = 1 << 1,   /* <postmaster> without domain is allowed */
} GmPathFlags;

/* Parse "<path>" at *LINE (after "FROM:" or "TO:"; leading spaces allowed),
 * then the ESMTP parameters. Non-ASCII is accepted here and flagged in
 * path->utf8: whether it is allowed depends on SMTPUTF8, decided by the caller.
 * On failure returns FALSE and sets *REASON to a static English phrase, and
 * *PARAMS_FAILED (when not NULL) to whether the address was fine and the
 * parameters were not. */
gboolean gm_parse_path_and_params (char *line, GmPathFlags flags, GmPath *path,
                                   GmParam *params, guint *n_params, const char **reason,
                                   gboolean *params_failed);

/* RFC 5321 §4.5.3.1.2: the longest domain name or address literal. */
#define GM_MAX_DOMAIN 255

/* Dot-atom domain (LDH labels or UTF-8 U-labels) or address literal, as in
 * EHLO and in addresses, at most GM_MAX_DOMAIN octets. */
gboolean gm_valid_domain (const char *s, gsize len, const char **reason);

/* Is S 1 to 20 digits whose value fits 64 bits? For SIZE= and BDAT. */
gboolean gm_parse_decimal (const char *s, guint64 *value);
